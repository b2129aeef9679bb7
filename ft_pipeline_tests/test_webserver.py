"""Smoke test: the Dagster webserver loads the code location and shows every definition through GraphQL."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from ft_pipeline.definitions import defs
from ft_pipeline_tests.dagster_cli import scratch_env, start_group, stop_group, tool
from ft_pipeline_tests.processes import free_port

REPOSITORY_QUERY = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
          ... on RepositoryLocation {
            repositories {
              jobs { name }
              schedules { name }
              sensors { name }
              assetNodes {
                assetKey { path }
                assetChecksOrError { ... on AssetChecks { checks { name } } }
              }
            }
          }
        }
      }
    }
  }
}
"""


def graphql(port: int, query: str) -> dict:
    """POST a GraphQL query to the webserver and return its `data`."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


def wait_until_up(port: int, server, log: Path) -> str:
    """The server's Dagster version once it answers; bounded so a server that never starts fails the test."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            return graphql(port, "{ version }")["version"]
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    raise AssertionError(f"the webserver did not answer:\n{log.read_text(errors='replace')[-5000:]}")


def expected() -> dict[str, set[str]]:
    """Names of everything our Definitions declare."""
    graph = defs.resolve_asset_graph()
    return {
        "assets": {key.to_user_string() for key in defs.resolve_all_asset_keys()},
        "checks": {f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys},
        "jobs": {job.name for job in defs.jobs},
        "schedules": {schedule.name for schedule in defs.schedules},
        "sensors": {sensor.name for sensor in defs.sensors},
    }


def test_webserver_shows_every_definition(tmp_path):
    port, log = free_port(), tmp_path / "webserver.log"
    server = start_group(
        [tool("dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], scratch_env(tmp_path), log
    )
    try:
        assert wait_until_up(port, server, log).startswith("1.")
        [entry] = graphql(port, REPOSITORY_QUERY)["workspaceOrError"]["locationEntries"]
    finally:
        stop_group(server)

    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    [repository] = location["repositories"]
    nodes = repository["assetNodes"]
    shown = {
        "assets": {"/".join(node["assetKey"]["path"]) for node in nodes},
        "checks": {
            f"{'/'.join(node['assetKey']['path'])}:{check['name']}"
            for node in nodes
            for check in node["assetChecksOrError"].get("checks", [])
        },
        "jobs": {job["name"] for job in repository["jobs"]} - {"__ASSET_JOB"},
        "schedules": {schedule["name"] for schedule in repository["schedules"]},
        "sensors": {sensor["name"] for sensor in repository["sensors"]},
    }
    assert shown == expected()
    assert {"ingest_job", "retrain_job"} <= shown["jobs"]
    assert {"retrain_sensor", "inbox_sensor"} <= shown["sensors"]
    assert {"daily_ingest_schedule", "nightly_retrain_schedule"} <= shown["schedules"]

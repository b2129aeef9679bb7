"""Helpers for tests that drive the Dagster command-line tools: a scratch instance, commands, process groups."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# queued runs (so a backfill waits for the daemon) one at a time (so a small machine is not flooded)
DAGSTER_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1
telemetry:
  enabled: false
"""


def tool(name: str) -> str:
    """Path of a console script of the running interpreter's environment (dagster, dagster-webserver, ...)."""
    return str(Path(sys.executable).parent / name)


def scratch_env(tmp_path: Path) -> dict[str, str]:
    """Environment with a fresh DAGSTER_HOME (queued runs) and data dir under `tmp_path`."""
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML, encoding="utf-8")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FT_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def run_tool(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a command from the repository root and capture its output."""
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)


def start_group(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a long-running command in its own process group, so that all its children can be stopped together."""
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(process: subprocess.Popen) -> None:
    """Stop a command started with start_group and every process it spawned."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # children that outlived the leader still belong to the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)

"""Backfills from the command line: an in-process asset partition range, and a job backfill run by the daemon."""

import time
from datetime import UTC, datetime
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef

from ft_pipeline.core.demo import write_demo_inbox
from ft_pipeline.core.io import partition_dates
from ft_pipeline_tests.dagster_cli import run_tool, scratch_env, start_group, stop_group, tool

DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def demo_env(tmp_path: Path) -> tuple[dict[str, str], Path, DagsterInstance]:
    """A scratch instance and data dir whose inbox holds a few demo records on each of DAYS."""
    env = scratch_env(tmp_path)
    data = Path(env["FT_DATA_DIR"])
    write_demo_inbox(data / "inbox", records=60, days=len(DAYS), end=datetime(2024, 3, 4, tzinfo=UTC))
    return env, data / "lake", DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"]))


def test_asset_materialize_partition_range_runs_in_process(tmp_path):
    env, lake, instance = demo_env(tmp_path)

    result = run_tool(
        [
            tool("dagster"),
            "asset",
            "materialize",
            "--select",
            "raw_logs,settlements",
            "--partition-range",
            f"{DAYS[0]}...{DAYS[-1]}",
            "-m",
            "ft_pipeline.definitions",
        ],
        env,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert partition_dates(lake, "raw_logs") == DAYS
    assert partition_dates(lake, "settlements") == DAYS
    [run] = instance.get_runs()  # single-run backfill policy: the whole range in one run
    assert run.status == DagsterRunStatus.SUCCESS
    assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == (
        DAYS[0],
        DAYS[-1],
    )


def test_job_backfill_queues_runs_that_the_daemon_executes(tmp_path):
    env, lake, instance = demo_env(tmp_path)

    result = run_tool(
        [
            tool("dagster"),
            "job",
            "backfill",
            "-j",
            "ingest_job",
            "--from",
            DAYS[0],
            "--to",
            DAYS[-1],
            "--noprompt",
            "-m",
            "ft_pipeline.definitions",
        ],
        env,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [backfill] = instance.get_backfills()
    runs_filter = RunsFilter(tags={"dagster/backfill": backfill.backfill_id})
    queued = instance.get_runs(runs_filter)
    assert sorted(run.tags["dagster/partition"] for run in queued) == DAYS
    assert {run.status for run in queued} == {DagsterRunStatus.QUEUED}
    assert partition_dates(lake, "raw_logs") == []  # nothing runs before the daemon

    daemon = start_group([tool("dagster-daemon"), "run", "-m", "ft_pipeline.definitions"], env, tmp_path / "daemon.log")
    try:
        # bounded only so a broken daemon fails the test instead of hanging it
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and daemon.poll() is None:
            if all(run.status in FINISHED for run in instance.get_runs(runs_filter)):
                break
            time.sleep(2)
    finally:
        stop_group(daemon)

    log = (tmp_path / "daemon.log").read_text(errors="replace")
    assert {run.status for run in instance.get_runs(runs_filter)} == {DagsterRunStatus.SUCCESS}, log[-5000:]
    assert partition_dates(lake, "settlements") == DAYS

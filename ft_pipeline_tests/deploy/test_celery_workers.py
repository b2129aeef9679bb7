"""The demo on celery workers for real: each day's ingest and the base model are runs on the workers; then two retrains
of different tasks run at once on two worker processes while a third waits for its gpu pool slot, the daemon restarted
meanwhile loses none of them, and every champion loads through the MLflow server from a process that never saw the
training machine's files."""

import re
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

from ft_pipeline.core.datasets import SPLITS
from ft_pipeline.core.io import partition_dates, table_glob
from ft_pipeline.core.lineage import adapter_dir
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import ALIAS
from ft_pipeline.training.pyfunc import ADAPTER_ARTIFACT
from ft_pipeline.training.tracking import client, registered_model_name, trained_log_ids
from ft_pipeline_tests.deploy.cluster import ASSET_JOB, TASK_TAG, TINY_TRAINING, running_cluster
from ft_pipeline_tests.mlflow_server import download_in_a_fresh_process

pytestmark = pytest.mark.deploy
TASKS = ["customer_support", "sql_generation", "character_chat"]


def _ancestors(pid: int) -> set[int]:
    """The process ids above `pid` up to init, from /proc."""
    found = set()
    while pid > 1:
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        found.add(pid)
    return found


def _settled_days(settings: Settings, task: str) -> dict[str, str]:
    """The day of each settled record of `task` in the lake, by log id."""
    query = "SELECT log_id, CAST(date AS VARCHAR) FROM read_parquet(?, hive_partitioning = true) WHERE task = ?"
    with duckdb.connect() as con:
        return dict(con.execute(query, [table_glob(settings.lake_dir, "settlements"), task]).fetchall())


def test_the_demo_runs_on_two_workers_within_the_gpu_pool_across_daemon_restarts(tmp_path):
    with running_cluster(tmp_path, TINY_TRAINING) as cluster:
        days = cluster.prepare(records=600, tasks=TASKS, gpu_slots=2)
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        cluster.start_daemon()
        with cluster.instance() as instance:
            # the ingest half goes through the queue too: a run a day, then the base model, each on one worker
            ingests = cluster.ingest(instance, days)
            runs = {(r.dagster_run.job_name, r.dagster_run.tags.get("dagster/partition")) for r in ingests}
            assert runs == {("ingest_job", day) for day in days} | {(ASSET_JOB, None)}
            assert all(len(cluster.worker_of(r.dagster_run.tags[TASK_TAG])) == 1 for r in ingests), cluster.logs()
            settings = Settings.from_env()
            assert partition_dates(settings.lake_dir, "settlements") == days

            cluster.submit_retrains(TASKS)
            # two trainings hold both gpu slots and the third waits in the queue: the daemon goes down and comes back
            cluster.wait_until(
                instance,
                "retrain_job",
                lambda c: c.get(DagsterRunStatus.STARTED, 0) == 2 and c.get(DagsterRunStatus.QUEUED, 0) == 1,
                "two started runs and a queued one",
            )
            cluster.restart_daemon()
            cluster.wait_for_success(instance, "retrain_job", len(TASKS), "the retrains")

            records = sorted(instance.get_run_records(RunsFilter(job_name="retrain_job")), key=lambda r: r.start_time or 0)
            assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == sorted(TASKS)
            first, second, third = records
            assert max(first.start_time, second.start_time) < min(first.end_time, second.end_time), "the first two overlap"
            assert third.start_time >= min(first.end_time, second.end_time), "the third waited for a gpu slot"
            # which worker ran each run, from the worker's own log of the celery task the launcher sent
            workers = [cluster.worker_of(r.dagster_run.tags[TASK_TAG]) for r in records]
            assert all(len(w) == 1 for w in workers), workers
            assert workers[0] != workers[1], "the two trainings at once ran on different workers"
            # and every run's process is a process of that worker, not of the daemon or the code location
            pids = {name: proc.pid for name, proc in cluster.workers.items()}
            for record, (worker,) in zip(records, workers):
                events = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
                run_pid = next(
                    int(m[1]) for e in events if (m := re.search(r"Started process for run \(pid: (\d+)\)", e.message))
                )
                assert pids[worker] in _ancestors(run_pid), (worker, run_pid)

        champions = {task: client(settings).get_model_version_by_alias(registered_model_name(task), ALIAS) for task in TASKS}
        for task, champion in champions.items():
            # each adapter trained on the records the ingest runs settled, of every day
            settled = _settled_days(settings, task)
            used = {log_id for split in SPLITS for log_id in trained_log_ids(settings, champion.run_id, split)}
            assert used <= settled.keys() and {settled[log_id] for log_id in used} == set(days), task
        uris = [f"models:/{registered_model_name(task)}@{ALIAS}" for task in TASKS]
        downloaded = download_in_a_fresh_process(settings.mlflow_tracking_uri, uris, tmp_path)
        for (task, champion), model in zip(champions.items(), downloaded):
            trained = adapter_dir(settings.adapters_dir, task, champion.version)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                assert (model / "artifacts" / ADAPTER_ARTIFACT / name).read_bytes() == (trained / name).read_bytes(), (task, name)

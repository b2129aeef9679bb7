"""Runs on celery workers for real: two retrains of different tasks run at once on two worker processes while a third
waits for its gpu pool slot, and the daemon restarted meanwhile loses none of them."""

import re
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

from ft_pipeline_tests.deploy.cluster import TASK_TAG, TINY_TRAINING, running_cluster

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


def test_retrains_run_on_two_workers_within_the_gpu_pool_across_a_daemon_restart(tmp_path):
    with running_cluster(tmp_path, TINY_TRAINING) as cluster:
        cluster.prepare(records=600, tasks=TASKS, gpu_slots=2)
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        # all three wait in the queue before the daemon starts, however fast the first trainings end
        cluster.submit_retrains(TASKS)
        cluster.start_daemon()
        with cluster.instance() as instance:
            # two trainings hold both gpu slots and the third waits in the queue: the daemon goes down and comes back
            cluster.wait_until(
                instance,
                lambda c: c.get(DagsterRunStatus.STARTED, 0) == 2 and c.get(DagsterRunStatus.QUEUED, 0) == 1,
                "two started runs and a queued one",
            )
            cluster.restart_daemon()
            cluster.wait_until(instance, lambda c: sum(c.values()) == c.get(DagsterRunStatus.SUCCESS, 0) == 3, "3 successes")

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

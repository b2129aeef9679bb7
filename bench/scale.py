"""Benchmark: the same N-task retrain on the production profile with 1 and with 2 celery workers, and the speed-up.

    .venv/bin/python bench/scale.py --tasks 4 --steps 30

Each side starts its own Postgres, Redis, MLflow server and Dagster daemon (the deploy test helpers), ingests the same
demo logs and builds the same base model in runs on its workers, then queues one retrain run per task with the gpu pool
sized to the number of workers, each worker running one run at a time with `--torch-threads` torch threads. A side's
time is from the first retrain's start to the last one's end, as the run records hold them; the ratio compares the two
sides.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the deploy test helpers start the servers

from dagster import RunsFilter

from ft_pipeline.core.demo import TASKS
from ft_pipeline_tests.deploy.cluster import TINY_TRAINING, running_cluster


def side(root: Path, workers: int, tasks: list[str], records: int, env: dict[str, str]) -> dict:
    """Retrain every task on `workers` workers; the makespan and the mean run time, in seconds."""
    with running_cluster(root, env) as cluster:
        days = cluster.prepare(records=records, tasks=tasks, gpu_slots=workers)
        for n in range(workers):
            cluster.start_worker(f"w{n + 1}")
        cluster.start_daemon()
        with cluster.instance() as instance:
            cluster.ingest(instance, days)
            cluster.submit_retrains(tasks)
            cluster.wait_for_success(instance, "retrain_job", len(tasks), "the retrains")
            finished = instance.get_run_records(RunsFilter(job_name="retrain_job"))
        starts = [r.start_time for r in finished if r.start_time]
        ends = [r.end_time for r in finished if r.end_time]
        runs = [r.end_time - r.start_time for r in finished if r.start_time and r.end_time]
        return {"makespan": max(ends) - min(starts), "mean_run": sum(runs) / len(runs)}


def main(argv: list[str] | None = None) -> None:
    """Run both sides one after the other and print their times and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, choices=range(1, len(TASKS) + 1), help="Tasks retrained (of the demo's).")
    parser.add_argument("--records", type=int, default=800, help="Demo records, spread over the tasks.")
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps of each training.")
    parser.add_argument("--torch-threads", type=int, default=1, help="Torch threads of each worker's training.")
    args = parser.parse_args(argv)
    tasks = TASKS[: args.tasks]
    env = {**TINY_TRAINING, "FT_MAX_STEPS": str(args.steps), "FT_EVAL_EVERY": str(max(args.steps // 3, 1))}
    env["FT_TORCH_THREADS"] = str(args.torch_threads)
    times = {}
    with tempfile.TemporaryDirectory(prefix="ft_bench_scale_") as root:
        for workers in (1, 2):
            times[workers] = side(Path(root) / f"workers-{workers}", workers, tasks, args.records, env)
            print(
                f"{workers} worker(s): {len(tasks)} retrains in {times[workers]['makespan']:.1f} s "
                f"(a run took {times[workers]['mean_run']:.1f} s on average)",
                flush=True,
            )
    print(f"speed-up of 2 workers over 1: {times[1]['makespan'] / times[2]['makespan']:.2f}x")
    cores = len(os.sched_getaffinity(0))
    print(
        f"both workers ran on this one machine's {cores} CPU core(s), {args.torch_threads} torch thread(s) each, beside the "
        "daemon and the servers: the second worker gains only the cores the first left idle, and a run's fixed costs "
        "(loading the code and the base model, MLflow logging) share those cores too."
    )
    print(
        "on a real cluster each worker has its own machine or GPU and the data volume and servers are shared over the "
        "network: N workers retrain up to N tasks at once at one worker's speed each, up to the gpu pool's size, and the "
        "limit moves to the shared storage, the MLflow server and Postgres."
    )


if __name__ == "__main__":
    main()

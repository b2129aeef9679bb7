"""The production profile as processes on this machine: a Dagster instance on Postgres (deploy/dagster.yaml), an MLflow
server, Redis, celery workers (deploy/celery.yaml) and the daemon, with ingest and retrain runs submitted to its queue."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter

from ft_pipeline_tests.dagster_cli import stop_group
from ft_pipeline_tests.deploy.postgres import running_postgres
from ft_pipeline_tests.deploy.redis import running_redis
from ft_pipeline_tests.mlflow_server import mlflow_server

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CODE = ["-m", "ft_pipeline.definitions"]  # the daemon and the run submitter load the same code location
TASK_TAG = "dagster-celery/task_id"
ASSET_JOB = "__ASSET_JOB"  # Dagster's implicit job of every asset
ENDED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
# trainings that fit in a test: a small built-in base model, a few steps at a high learning rate (an adapter must
# beat the base model on every test example by a wide margin, or the blocking gate fails the run), short generations
TINY_TRAINING = {
    "FT_BUILTIN_PRETRAIN_STEPS": "10",
    "FT_BUILTIN_VOCAB_SIZE": "512",
    "FT_MAX_STEPS": "6",
    "FT_LEARNING_RATE": "0.01",
    "FT_EVAL_EVERY": "2",
    "FT_MIN_TRAIN_EXAMPLES": "10",
    "FT_TEST_SHARE": "0.2",  # 15 or more test examples a task at 600 demo records: the gate's test has room
    "FT_EVAL_GENERATION_SAMPLES": "2",
    "FT_EVAL_MAX_NEW_TOKENS": "4",
    "FT_TORCH_THREADS": "1",
}


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in a session of its own (its children are stopped with it), writing to `log`."""
    with log.open("ab") as out:  # a file, not a pipe: a pipe nobody reads stops a chatty process once it is full
        return subprocess.Popen(command, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class Cluster:
    """The processes of one production profile; `root` holds the Dagster home, the shared data dir and every log."""

    root: Path
    env: dict[str, str]
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    daemon: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        """Run a command of the profile's environment to its end; its output, or RuntimeError with it."""
        done = subprocess.run(list(args), env=self.env, cwd=self.root, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} exited with {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
        return done.stdout

    def start_worker(self, name: str) -> None:
        """A celery worker as every worker host starts it (deploy/celery.yaml), one run at a time."""
        command = [
            str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
            "-y", str(REPO / "deploy" / "celery.yaml"), "-n", name, "--", "--pool", "solo",
        ]  # fmt: skip
        self.workers[name] = _start(command, self.env, self.root / f"worker-{name}.log")

    def worker_log(self, name: str) -> str:
        """What worker `name` has written so far."""
        return (self.root / f"worker-{name}.log").read_text(errors="replace")

    def start_daemon(self) -> None:
        """The Dagster daemon: the run queue, pools, run monitoring, sensors and schedules."""
        self.daemon = _start([str(BIN / "dagster-daemon"), "run", *CODE], self.env, self.root / "daemon.log")

    def stop_daemon(self) -> None:
        """Stop the daemon: queued runs wait in the queue until a daemon runs again."""
        assert self.daemon is not None
        stop_group(self.daemon)
        self.daemon = None

    def restart_daemon(self) -> None:
        """Stop the daemon and start a new one, as a release or a crash would."""
        self.stop_daemon()
        self.start_daemon()

    def instance(self) -> DagsterInstance:
        """The profile's Dagster instance, opened in this process."""
        return DagsterInstance.from_config(self.env["DAGSTER_HOME"])

    def prepare(self, records: int, tasks: list[str], gpu_slots: int) -> list[str]:
        """Demo logs in the inbox, one task partition per task, the gpu pool at `gpu_slots`; the days the logs hold."""
        from ft_pipeline.runner import data_dates
        from ft_pipeline.settings import Settings

        self.cli(sys.executable, "-m", "ft_pipeline.cli", "demo", "--records", str(records), "--days", "2")
        # the daemon's inbox sensor would start an ingest of its own beside the ones launched by hand
        self.cli(str(BIN / "dagster"), "sensor", "stop", "inbox_sensor", *CODE)
        with self.instance() as instance:
            instance.add_dynamic_partitions("tasks", tasks)
            instance.event_log_storage.set_concurrency_slots("gpu", gpu_slots)
        return data_dates(Settings.from_env(self.env))

    def launch(self, job: str, partition: str | None = None, ops: str | None = None) -> None:
        """Queue a run of `job` (of `partition`, of the `ops` selection) as an operator would, from the CLI.

        The run executes its steps in the worker's process (the in_process executor): on a shared CPU a process per
        step, each importing torch, would cost more than the tiny trainings themselves.
        """
        config = json.dumps({"execution": {"config": {"in_process": {}}}})
        tags = json.dumps({"dagster/partition": partition} if partition else {})
        selection = ["-o", ops] if ops else []
        self.cli(str(BIN / "dagster"), "job", "launch", *CODE, "-j", job, *selection, "--tags", tags, "--config-json", config)

    def ingest(self, instance: DagsterInstance, days: list[str]) -> list[RunRecord]:
        """One ingest_job run a day, then the base model built from their settlements, every run on the workers (the
        daemon running); their records, or RuntimeError with the failures when a run did not succeed."""
        for day in days:
            self.launch("ingest_job", day)
        self.wait_for_success(instance, "ingest_job", len(days), "every ingest")
        # base_model is in no job: a run of the implicit job of every asset, as the UI's Materialize button launches
        self.launch(ASSET_JOB, ops="base_model")
        self.wait_for_success(instance, ASSET_JOB, 1, "the base model")
        return [record for job in ("ingest_job", ASSET_JOB) for record in instance.get_run_records(RunsFilter(job_name=job))]

    def submit_retrains(self, tasks: list[str]) -> None:
        """Stop the daemon, queue one retrain run per task in that order, and start the daemon again: every retrain
        waits in the queue before the first is dequeued, however fast the first trainings end."""
        self.stop_daemon()
        for task in tasks:
            self.launch("retrain_job", task)
        self.start_daemon()

    def runs_by_status(self, instance: DagsterInstance, job: str) -> dict[DagsterRunStatus, int]:
        """How many of the instance's runs of `job` are in each status."""
        counts: dict[DagsterRunStatus, int] = {}
        for run in instance.get_runs(RunsFilter(job_name=job)):
            counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def wait_until(
        self,
        instance: DagsterInstance,
        job: str,
        done: Callable[[dict[DagsterRunStatus, int]], bool],
        what: str,
        timeout: float = 900,
    ) -> None:
        """Poll the runs of `job` until `done(counts)` holds; RuntimeError with the logs when a process died or it never
        held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.runs_by_status(instance, job)
            if done(counts):
                return
            dead = [name for name, proc in {**self.workers, "daemon": self.daemon}.items() if proc and proc.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}: {self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"no {what} after {timeout} s: {self.runs_by_status(instance, job)} {self.logs()}")

    def wait_for_success(self, instance: DagsterInstance, job: str, runs: int, what: str) -> None:
        """Wait until `runs` runs of `job` ended; RuntimeError with the failures when one of them did not succeed."""
        self.wait_until(instance, job, lambda c: sum(c.get(s, 0) for s in ENDED) == runs, f"the end of {what}")
        failed = [run.run_id for run in instance.get_runs(RunsFilter(job_name=job)) if run.status != DagsterRunStatus.SUCCESS]
        if failed:
            why = [
                f"{e.step_key}: {e.dagster_event.step_failure_data.error.message}"
                if e.dagster_event.is_step_failure
                else e.message
                for run_id in failed
                for e in instance.all_logs(run_id)
                if e.dagster_event and e.dagster_event.is_failure
            ]
            raise RuntimeError(f"{what}: runs {failed} did not succeed: {why} {self.logs()}")

    def logs(self) -> str:
        """The tail of every log under the root."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(self.root.glob("*.log")))

    def worker_of(self, task_id: str) -> list[str]:
        """The workers whose log shows that they received celery task `task_id`."""
        pattern = re.compile(rf"execute_job\[{re.escape(task_id)}\] received")
        return [name for name in self.workers if pattern.search(self.worker_log(name))]


@contextmanager
def running_cluster(root: Path, extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """Postgres, Redis and an MLflow server on Postgres started, the Dagster home from deploy/dagster.yaml; stops every
    process it or the cluster started (workers and daemon first) and removes what they wrote outside `root`."""
    with ExitStack() as stack:
        postgres = stack.enter_context(running_postgres(("dagster", "mlflow")))
        redis = stack.enter_context(running_redis())
        mlflow = stack.enter_context(mlflow_server(root / "mlflow", backend_store_uri=f"{postgres}/mlflow"))
        home = root / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            # the worker command starts `celery` by name, as from an activated environment or an image
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": f"{postgres}/dagster",
            "FT_DAGSTER_LOCAL_DIR": str(root / "dagster_local"),
            "FT_DATA_DIR": str(root / "data"),
            "FT_MLFLOW_TRACKING_URI": mlflow,
            "FT_CELERY_BROKER_URL": f"{redis}/0",
            "FT_CELERY_BACKEND_URL": f"{redis}/1",
            # the daemon's retrain sensor would queue retrains of its own beside the ones that are counted
            "FT_RETRAIN_THRESHOLD": "1000000000",
            # and so would the schedules, were a test to cross their hour: a leap day's midnight is no test's
            "FT_DAILY_INGEST_CRON": "0 0 29 2 *",
            "FT_NIGHTLY_RETRAIN_CRON": "0 0 29 2 *",
            "DAGSTER_DISABLE_TELEMETRY": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **(extra_env or {}),
        }
        cluster = Cluster(root, env)
        # this process opens the instance too, and deploy/dagster.yaml reads its URLs from the environment
        stack.callback(os.environ.update, dict(os.environ))
        stack.callback(os.environ.clear)
        os.environ.update(env)

        def stop_all() -> None:
            for proc in [*cluster.workers.values(), cluster.daemon]:
                if proc is not None:
                    stop_group(proc)

        stack.callback(stop_all)
        yield cluster

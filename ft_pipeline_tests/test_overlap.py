"""Overlapping runs on one data dir: concurrent pipeline runs, trainings of one task and alias moves take turns."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
from dagster import DagsterRunStatus, instance_for_test
from dagster._core.test_utils import create_run_for_test

from ft_pipeline.core.io import table_glob
from ft_pipeline.core.locks import hold
from ft_pipeline.runner import OWNER_TAG, fail_dead_runs
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import champion_history
from ft_pipeline.training.tracking import client, registered_model_name
from ft_pipeline_tests.evaluation_fixtures import build_tiny_base, write_dataset

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _lake(settings: Settings) -> dict[str, list]:
    """Rows per day and the number of distinct log ids of each lake table."""
    return {
        table: duckdb.sql(
            f"SELECT date, count(*), count(DISTINCT log_id) FROM read_parquet('{table_glob(settings.lake_dir, table)}', "
            "hive_partitioning=true) GROUP BY date ORDER BY date"
        ).fetchall()
        for table in ("raw_logs", "settlements")
    }


def test_runs_of_a_killed_runner_are_marked_failed_and_live_ones_kept(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    with instance_for_test() as instance:
        dead = create_run_for_test(instance, job_name="j", status=DagsterRunStatus.STARTED, tags={OWNER_TAG: "runner-1-dead"})
        live = create_run_for_test(instance, job_name="j", status=DagsterRunStatus.STARTED, tags={OWNER_TAG: "runner-2-live"})
        other = create_run_for_test(instance, job_name="j", status=DagsterRunStatus.STARTED)  # launched by the daemon
        (settings.root / ".locks").mkdir(parents=True)
        (settings.root / ".locks" / "runner-1-dead.lock").write_text("{}")
        with hold(settings.root, "runner-2-live"):
            assert fail_dead_runs(instance, settings) == [dead.run_id]
        statuses = {run.run_id: instance.get_run_by_id(run.run_id).status for run in (dead, live, other)}
        assert statuses == {
            dead.run_id: DagsterRunStatus.FAILURE,
            live.run_id: DagsterRunStatus.STARTED,
            other.run_id: DagsterRunStatus.STARTED,
        }
        assert not (settings.root / ".locks" / "runner-1-dead.lock").exists()


def test_four_concurrent_pipeline_runs_end_with_the_lake_of_one(tmp_path):
    data = tmp_path / "data"
    demo = subprocess.run(
        [sys.executable, "-m", "ft_pipeline.cli", "demo", "--records", "400", "--days", "3"],
        env=_env(FT_DATA_DIR=str(data)),
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stderr
    home = tmp_path / "dagster"  # fresh stores: the four runs set them up at once
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text().replace("data/dagster", str(home)))
    env = _env(FT_DATA_DIR=str(data), DAGSTER_HOME=str(home))
    command = [sys.executable, "-m", "ft_pipeline.cli", "run", "--select", "raw_logs,settlements"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [proc.communicate()[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, "\n\n".join(outputs)
    concurrent = _lake(Settings(data_dir=str(data)))

    alone = tmp_path / "alone"
    subprocess.run(
        [sys.executable, "-m", "ft_pipeline.cli", "demo", "--records", "400", "--days", "3"],
        env=_env(FT_DATA_DIR=str(alone)),
        check=True,
    )
    subprocess.run(command, env={**env, "FT_DATA_DIR": str(alone)}, check=True, capture_output=True)
    assert concurrent == _lake(Settings(data_dir=str(alone)))
    assert all(rows == distinct for table in concurrent.values() for _, rows, distinct in table)


def test_two_trainings_of_one_task_take_turns_and_register_one_version(tmp_path):
    base = build_tiny_base(tmp_path / "base")
    settings = Settings(data_dir=str(tmp_path / "data"))
    write_dataset(settings, "greet")
    env = _env(
        FT_DATA_DIR=settings.data_dir,
        FT_BASE_MODEL=str(base),
        FT_DEVICE="cpu",
        FT_TORCH_THREADS="1",
        FT_LORA_R="8",
        FT_BATCH_SIZE="8",
        FT_MAX_STEPS="10",
        FT_EVAL_EVERY="5",
    )
    command = [sys.executable, "-m", "ft_pipeline.training.lora", "--task", "greet"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    results = [json.loads(out[out.index("\n{") :]) for out, _ in outputs]
    assert sorted(r["retrained"] for r in results) == [False, True]
    assert {r["version"] for r in results} == {1}
    versions = client(settings).search_model_versions(f"name = '{registered_model_name('greet')}'")
    assert [int(v.version) for v in versions] == [1]


MOVER = """
import sys, time
from pathlib import Path
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import promote
from ft_pipeline.training.tracking import client
settings = Settings(data_dir=sys.argv[1])
client(settings)
print("ready", flush=True)
while not Path(sys.argv[1], "go").exists():  # both start moving at once
    time.sleep(0.01)
for i in range(20):
    promote(settings, "qa", int(sys.argv[2 + i % 2]), f"move {i}")
"""


def test_two_alias_movers_keep_one_unbroken_history(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    mlflow = client(settings)
    mlflow.create_registered_model(registered_model_name("qa"))
    for version in (1, 2, 3):
        (settings.adapters_dir / "qa" / str(version)).mkdir(parents=True)
        mlflow.create_model_version(registered_model_name("qa"), source=(settings.adapters_dir / "qa" / str(version)).as_uri())
    movers = [
        subprocess.Popen([sys.executable, "-c", MOVER, settings.data_dir, *pair], env=_env(), stdout=subprocess.PIPE, text=True)
        for pair in (("1", "2"), ("3", "1"))
    ]
    assert [proc.stdout.readline().strip() for proc in movers] == ["ready", "ready"]
    (settings.root / "go").touch()
    assert [proc.wait() for proc in movers] == [0, 0]
    history = champion_history(settings, "qa")
    assert history and all(entry["from"] == before["to"] for before, entry in itertools.pairwise(history))
    assert history[-1]["to"] == int(mlflow.get_model_version_by_alias(registered_model_name("qa"), "champion").version)

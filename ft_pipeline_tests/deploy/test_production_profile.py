"""The production profile for real: a Dagster instance on Postgres (deploy/dagster.yaml) running the pipeline, and an
MLflow tracking server on Postgres with proxied artifacts."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from ft_pipeline_tests.deploy.postgres import running_postgres
from ft_pipeline_tests.mlflow_server import assert_adapter_travels_through_the_server, mlflow_server

pytestmark = pytest.mark.deploy
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def postgres():
    with running_postgres(("dagster", "mlflow")) as url:
        yield url


def test_the_pipeline_runs_on_a_dagster_instance_on_postgres(postgres, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": f"{postgres}/dagster",
        "FT_DAGSTER_LOCAL_DIR": str(tmp_path / "dagster_local"),
        "FT_DATA_DIR": str(tmp_path / "data"),
    }
    run_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    cli = [sys.executable, "-m", "ft_pipeline.cli"]
    subprocess.run([*cli, "demo", "--records", "300", "--days", "3"], env=run_env, cwd=tmp_path, check=True, capture_output=True)
    done = subprocess.run(
        [*cli, "run", "--select", "raw_logs,settlements,daily_aggregates,pattern_report"],
        env=run_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        assert len(runs) == 2 and all(run.status == DagsterRunStatus.SUCCESS for run in runs)
        materialized = {key.to_user_string() for key in instance.get_asset_keys()}
        assert {"raw_logs", "settlements", "daily_aggregates", "pattern_report"} <= materialized
    assert (tmp_path / "data" / "reports" / "pattern_report.json").is_file()


def test_adapters_travel_through_an_mlflow_server_on_postgres(postgres, tmp_path):
    with mlflow_server(tmp_path / "server", backend_store_uri=f"{postgres}/mlflow") as url:
        assert_adapter_travels_through_the_server(url, tmp_path / "server", tmp_path)

"""A real `mlflow server` process for tests that talk to a tracking server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ft_pipeline_tests.processes import free_port, wait_for_http


@contextmanager
def mlflow_server(root: Path, backend_store_uri: str | None = None) -> Iterator[str]:
    """`mlflow server` on `backend_store_uri` (default: a sqlite store) with proxied artifact storage under `root`, on a
    free loopback port."""
    root.mkdir(parents=True)
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = root / "server.log"
    with log.open("wb") as out:  # a file, not a pipe: a pipe nobody reads stops a chatty server once it is full
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(proc, f"{url}/health", "mlflow server", lambda: log.read_text(errors="replace")[-2000:])
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def assert_adapter_travels_through_the_server(url: str, server_dir: Path, work: Path) -> None:
    """A task's experiment takes the server's artifact root, and an adapter registered from one data dir downloads
    through the server in a process with another working folder, after the trainer's files are gone."""
    from mlflow.tracking import MlflowClient

    from ft_pipeline.settings import Settings
    from ft_pipeline.training.tracking import Tracker, ensure_experiment, registered_model_name

    trainer_dir = work / "trainer"
    settings = Settings(data_dir=str(trainer_dir), mlflow_tracking_uri=url)
    experiment = MlflowClient(tracking_uri=url).get_experiment(ensure_experiment(settings, "support"))
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    adapter = trainer_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    tracker = Tracker.start(settings, "support", {})
    tracker.log_artifacts(adapter, "adapter")
    version = tracker.register("support", "adapter", {})
    tracker.finish()
    shutil.rmtree(trainer_dir)

    (downloaded,) = download_in_a_fresh_process(url, [f"models:/{registered_model_name('support')}/{version}"], work)
    assert json.loads((downloaded / "adapter_config.json").read_text()) == {"r": 8}
    assert any((server_dir / "artifacts").rglob("adapter_config.json")), "the artifact is kept by the server"


def download_in_a_fresh_process(url: str, model_uris: list[str], work: Path) -> list[Path]:
    """Each of `model_uris` downloaded through the server at `url` by a new process that knows only that URL: its working
    folder a new empty one under `work`, its FT_DATA_DIR another, no other ft_pipeline, Dagster or MLflow variable."""
    elsewhere, data_dir = work / "elsewhere", work / "elsewhere_data"
    elsewhere.mkdir()
    data_dir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FT_", "DAGSTER_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=url, FT_DATA_DIR=str(data_dir), MLFLOW_DISABLE_TELEMETRY="true")
    script = "import sys, mlflow\nfor i, uri in enumerate(sys.argv[1:]):\n    print(mlflow.artifacts.download_artifacts(uri, dst_path=str(i)))"
    done = subprocess.run([sys.executable, "-c", script, *model_uris], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [Path(line) for line in done.stdout.splitlines()[-len(model_uris) :]]

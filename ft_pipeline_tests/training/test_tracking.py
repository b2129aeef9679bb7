"""MLflow helpers: experiments with their own artifact location, buffered metrics, resumed runs, registered versions."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

from ft_pipeline.settings import Settings
from ft_pipeline.training.tracking import Tracker, ensure_experiment, registered_model_name, run_path


def _client(settings):
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def test_experiment_per_task_with_artifacts_under_the_artifact_root(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    first = ensure_experiment(settings, "support")
    assert ensure_experiment(settings, "support") == first != ensure_experiment(settings, "billing")
    experiment = _client(settings).get_experiment(first)
    assert experiment.name == "ft_pipeline/support"
    assert experiment.artifact_location == (settings.artifact_root / "support").as_uri()
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()


def test_metrics_reach_the_store_on_flush_and_a_failed_run_drops_the_unflushed_ones(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    tracker = Tracker.start(settings, "support", {"lora_r": 8}, {"dagster_run_id": "abc"})
    client = _client(settings)
    tracker.log_metrics({"train_loss": 2.0}, 1)
    assert client.get_metric_history(tracker.run_id, "train_loss") == []
    tracker.flush()
    tracker.log_metrics({"train_loss": 1.5}, 2)
    tracker.finish("FAILED")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.params == {"lora_r": "8"}
    assert run.data.tags["dagster_run_id"] == "abc" and run.data.tags["task"] == "support"
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "train_loss")] == [(1, 2.0)]

    resumed = Tracker.resume(settings, tracker.run_id, {"resumed": "true"})
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    resumed.log_metrics({"train_loss": 1.4}, 2)
    resumed.finish()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "train_loss")] == [1, 2]
    assert run_path(settings, tracker.run_id).endswith(f"#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}")


def test_each_registration_is_a_new_version_pointing_at_the_run_artifacts(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    versions = []
    for dataset_version in ("d1", "d2"):
        tracker = Tracker.start(settings, "support", {})
        tracker.log_artifacts(tmp_path / "adapter", "adapter")
        versions.append(
            tracker.register("support", "adapter", {"dataset_version": dataset_version, "mlflow_run_id": tracker.run_id})
        )
        tracker.finish()
    assert versions == [1, 2]
    client = _client(settings)
    second = client.get_model_version(registered_model_name("support"), "2")
    assert second.tags["dataset_version"] == "d2" and second.tags["mlflow_run_id"] == second.run_id
    assert second.source == f"{client.get_run(second.run_id).info.artifact_uri}/adapter"
    assert [a.path for a in client.list_artifacts(second.run_id, "adapter")] == ["adapter/adapter_config.json"]


def test_with_a_tracking_server_artifacts_go_to_the_server_and_load_from_anywhere(tmp_path):
    """A real `mlflow server` with proxied artifacts: the experiment takes the server's root, and a registered
    adapter downloads through the server in a process with another data dir, after the trainer's files are gone."""
    server_dir, trainer_dir = tmp_path / "server", tmp_path / "trainer"
    with mlflow_server(server_dir) as url:
        settings = Settings(data_dir=str(trainer_dir), mlflow_tracking_uri=url)
        experiment = _client(settings).get_experiment(ensure_experiment(settings, "support"))
        assert experiment.artifact_location.startswith("mlflow-artifacts:")
        adapter = trainer_dir / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text('{"r": 8}')
        tracker = Tracker.start(settings, "support", {})
        tracker.log_artifacts(adapter, "adapter")
        version = tracker.register("support", "adapter", {})
        tracker.finish()
        shutil.rmtree(trainer_dir)

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        script = (
            "import sys, mlflow; "
            f"mlflow.set_tracking_uri({url!r}); "
            f"print(mlflow.artifacts.download_artifacts('models:/{registered_model_name('support')}/{version}', dst_path='.'))"
        )
        out = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, check=True)
        downloaded = Path(out.stdout.strip().splitlines()[-1])
        assert json.loads((downloaded / "adapter_config.json").read_text()) == {"r": 8}
        assert any((server_dir / "artifacts").rglob("adapter_config.json")), "the artifact is kept by the server"


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server` on a sqlite store with proxied artifact storage under `root`, on a free loopback port."""
    root.mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("mlflow server did not answer /health")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)

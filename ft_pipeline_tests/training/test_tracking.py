"""MLflow helpers: experiments with their own artifact location, buffered metrics, resumed runs, registered versions."""

from mlflow.tracking import MlflowClient

from ft_pipeline.settings import Settings
from ft_pipeline.training.tracking import Tracker, ensure_experiment, registered_model_name, run_path
from ft_pipeline_tests.mlflow_server import assert_adapter_travels_through_the_server, mlflow_server


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
    with mlflow_server(tmp_path / "server") as url:
        assert_adapter_travels_through_the_server(url, tmp_path / "server", tmp_path)

"""Tests of the per-task status behind `ft-pipeline status`."""

from ft_pipeline.core.io import write_json_atomic
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import promote
from ft_pipeline.training.status import task_status
from ft_pipeline.training.tracking import client, registered_model_name
from ft_pipeline_tests.core.test_freshness import write_settlements


def test_status_counts_data_and_reports_the_champion(tmp_path):
    settings = Settings(data_dir=str(tmp_path), retrain_threshold=3)
    write_settlements(
        settings,
        "2024-01-01",
        [("qa", "2024-01-01T10:00:00+00:00"), ("qa", "2024-01-02T10:00:00+00:00"), ("chat", "2024-01-02T10:00:00+00:00")],
    )
    write_json_atomic(
        {
            "data_watermark": "2024-01-01T10:00:00+00:00",
            "trained_at": "2024-01-01T11:00:00+00:00",
            "base_identity": {"source": "builtin", "path": "/models/base/abc", "hash": "abc123"},
        },
        settings.adapters_dir / "qa" / "1" / "training_config.json",
    )
    mlflow = client(settings)
    mlflow.create_registered_model(registered_model_name("qa"))
    mlflow.create_model_version(registered_model_name("qa"), source="unused")
    promote(settings, "qa", 1, "first")
    scores = {"loss": 1.0, "perplexity": 2.7, "token_accuracy": 0.5, "chrf": 40.0, "exact_match": None}
    write_json_atomic(
        {
            "scores": {"candidate": scores, "base": {**scores, "loss": 2.0}},
            "tests": {"vs_base": {"p_value": 0.01}},
            "n_examples": 12,
            "evaluated_at": "2024-01-01T12:00:00+00:00",
        },
        settings.evaluations_dir / "qa" / "1.json",
    )

    rows = {row["task"]: row for row in task_status(settings)}
    assert rows["qa"]["settled"] == 2 and rows["qa"]["new_examples"] == 1 and rows["qa"]["until_retrain"] == 2
    assert rows["qa"]["champion_version"] == 1 and rows["qa"]["last_trained"] == "2024-01-01T11:00:00+00:00"
    assert rows["qa"]["champion_scores"]["loss"] == 1.0 and rows["qa"]["champion_scores"]["base_loss"] == 2.0
    assert rows["qa"]["champion_base"] == {"source": "builtin", "path": "/models/base/abc", "hash": "abc123"}
    assert rows["chat"] == {
        "task": "chat",
        "settled": 1,
        "new_examples": 1,
        "until_retrain": 2,
        "latest_version": None,
        "last_trained": None,
        "champion_version": None,
        "champion_base": None,
        "champion_scores": None,
    }

"""Tests of the adapter_evaluation asset, its adapter_beats_base gate and the champion_live_acceptance check."""

import json

import pytest
from dagster import AssetCheckSeverity, DagsterInstance, materialize

from ft_pipeline.assets.adapter_evaluation import adapter_evaluation
from ft_pipeline.checks import adapter_beats_base, champion_live_acceptance
from ft_pipeline.resources import PipelineResource
from ft_pipeline.training.champion import current_champion, promote
from ft_pipeline_tests.evaluation_fixtures import build_tiny_base, tiny_settings, train_adapter

ENV = {"FT_DEVICE": "cpu", "FT_TORCH_THREADS": "1", "FT_BATCH_SIZE": "8"}
RUN_CONFIG = {"ops": {"adapter_evaluation": {"config": {"eval_generation_samples": 4, "eval_max_new_tokens": 8}}}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """A tiny random base model and one data dir for the module; each test uses its own task."""
    import torch

    torch.set_num_threads(1)
    base = build_tiny_base(tmp_path_factory.mktemp("base"))
    return tiny_settings(tmp_path_factory.mktemp("data"), base)


def run(settings, task):
    """Materialize adapter_evaluation and its gate for one task partition."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tasks", [task])
    resource = PipelineResource(data_dir=settings.data_dir, base_model=settings.base_model)
    return materialize(
        [adapter_evaluation, adapter_beats_base],
        resources={"pipeline": resource},
        partition_key=task,
        instance=instance,
        run_config=RUN_CONFIG,
        raise_on_error=False,
    )


def test_trained_adapter_passes_the_gate_and_becomes_champion(settings, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    version = train_adapter(settings, "good", steps=15)
    result = run(settings, "good")
    assert result.success
    metadata = result.asset_materializations_for_node("adapter_evaluation")[0].metadata
    assert metadata["decision"].value == "promote" and metadata["version"].value == version
    assert metadata["eval_loss"].value < metadata["base_eval_loss"].value
    assert "| candidate |" in metadata["scores"].value
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["p_value"].value < 0.05
    assert current_champion(settings, "good") == version


def test_untrained_adapter_fails_the_gate(settings, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    train_adapter(settings, "flat", steps=0)
    result = run(settings, "flat")
    metadata = result.asset_materializations_for_node("adapter_evaluation")[0].metadata
    assert metadata["decision"].value == "keep"
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert current_champion(settings, "flat") is None


def write_report(settings, rates):
    """reports/pattern_report.json whose adapter_version group holds {key: (acceptance_rate, n)}."""
    groups = {"adapter_version": {k: {"n": n, "acceptance_rate": r} for k, (r, n) in rates.items()}}
    path = settings.reports_dir / "pattern_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"groups": groups}), encoding="utf-8")


def test_live_acceptance_check_warns_on_a_planted_drop(tmp_path):
    from ft_pipeline.settings import Settings
    from ft_pipeline.training.tracking import client, registered_model_name

    settings = Settings(data_dir=str(tmp_path))
    mlflow = client(settings)
    mlflow.create_registered_model(registered_model_name("live"))
    for version in (1, 2):
        (settings.adapters_dir / "live" / str(version)).mkdir(parents=True)
        mlflow.create_model_version(registered_model_name("live"), source="unused")
    promote(settings, "live", 1, "first")
    promote(settings, "live", 2, "better offline")
    resource = PipelineResource(data_dir=str(tmp_path))

    write_report(settings, {"live:1": (0.82, 500), "live:2": (0.61, 500), "other:1": (0.1, 50)})
    dropped = champion_live_acceptance(pipeline=resource)
    assert not dropped.passed and dropped.severity == AssetCheckSeverity.WARN
    assert "ft-pipeline rollback live --to 1" in dropped.description

    write_report(settings, {"1": (0.82, 500), "2": (0.80, 500)})
    steady = champion_live_acceptance(pipeline=resource)
    assert steady.passed and steady.metadata["compared"].value == 1

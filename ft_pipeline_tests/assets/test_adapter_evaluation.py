"""Tests of the adapter_evaluation asset, its blocking gate checks, the champion promotion step after them, and the
champion_live_acceptance check."""

import json

import pytest
from dagster import AssetCheckSeverity, DagsterInstance, materialize

from ft_pipeline.assets.adapter_evaluation import adapter_evaluation
from ft_pipeline.assets.champion import champion
from ft_pipeline.checks import adapter_beats_base, adapter_beats_champion, champion_live_acceptance
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


def run(settings, task, run_config=RUN_CONFIG):
    """Materialize adapter_evaluation, its gate checks and the champion step for one task partition."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tasks", [task])
    resource = PipelineResource(data_dir=settings.data_dir, base_model=settings.base_model)
    return materialize(
        [adapter_evaluation, adapter_beats_base, adapter_beats_champion, champion],
        resources={"pipeline": resource},
        partition_key=task,
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )


def order(result):
    """The run's check evaluations and materializations in event-log order, as ("check", name) / ("asset", name)."""
    events = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            events.append(("check", event.event_specific_data.check_name))
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            events.append(("asset", event.asset_key.to_user_string()))
    return events


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
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["adapter_beats_base"].passed and checks["adapter_beats_base"].metadata["p_value"].value < 0.05
    assert checks["adapter_beats_champion"].passed
    # the event log shows the evaluation, then both checks, then the promotion
    events = order(result)
    assert events[0] == ("asset", "adapter_evaluation") and events[3] == ("asset", "champion") and len(events) == 4
    assert set(events[1:3]) == {("check", "adapter_beats_base"), ("check", "adapter_beats_champion")}
    promoted = result.asset_materializations_for_node("champion")[0].metadata
    assert promoted["promoted"].value is True and promoted["champion"].value == version
    assert current_champion(settings, "good") == version


def test_dry_run_promotion_step_records_without_moving(settings, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    train_adapter(settings, "dryrun", steps=15)
    result = run(settings, "dryrun", {"ops": {**RUN_CONFIG["ops"], "champion": {"config": {"dry_run": True}}}})
    assert result.success
    metadata = result.asset_materializations_for_node("champion")[0].metadata
    assert metadata["dry_run"].value is True and metadata["promoted"].value is False
    assert current_champion(settings, "dryrun") is None


def test_untrained_adapter_fails_the_gate_and_never_becomes_champion(settings, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    train_adapter(settings, "flat", steps=0)
    result = run(settings, "flat")
    assert not result.success
    metadata = result.asset_materializations_for_node("adapter_evaluation")[0].metadata
    assert metadata["decision"].value == "keep"
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    failed = checks["adapter_beats_base"]
    assert not failed.passed and failed.severity == AssetCheckSeverity.ERROR
    # the blocking check stopped the promotion step: it never ran, and the alias never moved
    assert not result.asset_materializations_for_node("champion")
    assert ("asset", "champion") not in order(result)
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

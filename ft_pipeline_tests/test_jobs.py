"""Tests of the ingest and retrain jobs as the code location resolves them."""

import json
from datetime import UTC, datetime

import dagster as dg

from ft_pipeline.core.demo import write_demo_inbox
from ft_pipeline.core.io import partition_dates
from ft_pipeline.definitions import defs
from ft_pipeline.partitions import daily_partitions, task_partitions
from ft_pipeline.settings import Settings


def selection(job_name: str) -> tuple[set[str], set[dg.AssetCheckKey]]:
    """Asset names and asset check keys a job executes."""
    job = defs.resolve_job_def(job_name)
    return {key.to_user_string() for key in job.asset_layer.selected_asset_keys}, set(
        job.asset_layer.asset_graph.asset_check_keys
    )


def test_retrain_job_runs_dataset_training_evaluation_and_promotion_with_their_checks():
    assets, checks = selection("retrain_job")
    assert assets == {"task_dataset", "lora_adapter", "adapter_evaluation", "champion"}
    targeted = {key for key in defs.resolve_asset_graph().asset_check_keys if key.asset_key.to_user_string() in assets}
    assert targeted and checks == targeted
    assert defs.resolve_job_def("retrain_job").partitions_def == task_partitions


def test_ingest_job_runs_one_day_and_refreshes_the_report_with_its_alert_checks(tmp_path, monkeypatch):
    assets, checks = selection("ingest_job")
    assert assets == {"raw_logs", "settlements", "daily_aggregates", "pattern_report"}
    report_checks = {
        key for key in defs.resolve_asset_graph().asset_check_keys if key.asset_key.to_user_string() == "pattern_report"
    }
    assert report_checks and report_checks <= checks
    assert defs.resolve_job_def("ingest_job").partitions_def == daily_partitions
    monkeypatch.setenv("FT_DATA_DIR", str(tmp_path))
    settings = Settings.from_env()
    write_demo_inbox(settings.inbox_dir, records=40, days=2, end=datetime(2024, 3, 3, tzinfo=UTC))

    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("ingest_job").execute_in_process(partition_key="2024-03-02", instance=instance)

    assert result.success
    assert partition_dates(settings.lake_dir, "raw_logs") == ["2024-03-02"]
    assert partition_dates(settings.lake_dir, "settlements") == ["2024-03-02"]
    assert partition_dates(settings.lake_dir, "daily_aggregates") == ["2024-03-02"]
    materialized = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    assert materialized == assets
    evaluated = {(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations()}
    assert evaluated == {(key.asset_key.to_user_string(), key.name) for key in report_checks}
    report = json.loads((settings.reports_dir / "pattern_report.json").read_text())
    assert report["as_of"] == "2024-03-02" and report["totals"]["records"] > 0

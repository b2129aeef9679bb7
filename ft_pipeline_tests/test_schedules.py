"""Tests of the daily ingest and nightly retrain schedules."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource
from ft_pipeline.schedules import daily_ingest_schedule, nightly_retrain_schedule
from ft_pipeline.settings import Settings
from ft_pipeline_tests.retrain_fixtures import ingested_at, write_adapter, write_partition

NIGHT = datetime(2024, 3, 5, 2, 0, tzinfo=UTC)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def evaluate(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance, data_dir: Path):
    """What one tick at NIGHT returns against the data under `data_dir`."""
    resources = {"pipeline": PipelineResource(data_dir=str(data_dir))}
    # the context owns resources and an instance scope; leaving it open leaks them into later tests
    with (
        dg.build_schedule_context(instance=instance, scheduled_execution_time=NIGHT, resources=resources) as context,
        dg.partition_loading_context(dynamic_partitions_store=instance),
    ):
        return schedule(context)


def test_crons_come_from_settings_in_utc():
    settings = Settings.from_env()
    assert daily_ingest_schedule.cron_schedule == settings.daily_ingest_cron
    assert nightly_retrain_schedule.cron_schedule == settings.nightly_retrain_cron
    assert {daily_ingest_schedule.execution_timezone, nightly_retrain_schedule.execution_timezone} == {"UTC"}


def test_daily_ingest_runs_yesterdays_partition(instance, tmp_path):
    request = evaluate(daily_ingest_schedule, instance, tmp_path)
    assert request.partition_key == "2024-03-04"
    assert request.run_key == "ingest:2024-03-04"


def test_nightly_retrain_requests_each_known_task_with_new_data(instance, tmp_path):
    settings = Settings.from_env(data_dir=str(tmp_path))
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 3, 0), ("summarize", 4, 10), ("translate", 2, 20))
    write_adapter(settings.adapters_dir, "summarize", 1, ingested_at(13))  # trained on all its data
    instance.add_dynamic_partitions(task_partitions.name, ["qa", "summarize"])  # translate not yet a partition

    requests = evaluate(nightly_retrain_schedule, instance, tmp_path)

    assert [(r.partition_key, r.run_key) for r in requests] == [("qa", "nightly:2024-03-05:qa")]
    assert requests[0].tags["ft_pipeline/new_examples"] == "3"


def test_nightly_retrain_skips_without_new_data(instance, tmp_path):
    assert isinstance(evaluate(nightly_retrain_schedule, instance, tmp_path), dg.SkipReason)


def test_nightly_retrain_leaves_out_a_task_being_trained(instance, tmp_path):
    from ft_pipeline.core.locks import hold

    settings = Settings.from_env(data_dir=str(tmp_path))
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 3, 0), ("summarize", 4, 10))
    instance.add_dynamic_partitions(task_partitions.name, ["qa", "summarize"])
    with hold(settings.root, "train-qa"):
        requests = evaluate(nightly_retrain_schedule, instance, tmp_path)
    assert [r.partition_key for r in requests] == ["summarize"]

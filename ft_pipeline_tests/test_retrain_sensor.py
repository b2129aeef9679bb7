"""Tests of the retrain sensor: threshold, per-task runs, cursor across restarts, new task partitions, cost."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from ft_pipeline.core import retrain
from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource
from ft_pipeline.sensors import retrain_sensor
from ft_pipeline.settings import Settings
from ft_pipeline_tests.retrain_fixtures import ingested_at, write_adapter, write_partition


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(data_dir=str(tmp_path))


def tick(instance: dg.DagsterInstance, settings: Settings, cursor: str | None) -> dg.SensorResult:
    """One sensor evaluation, with the partitions it asks for applied to the instance as the daemon would."""
    resources = {"pipeline": PipelineResource(data_dir=settings.data_dir)}
    # the context owns resources and an instance scope; leaving it open leaks them into later tests
    with (
        dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context,
        dg.partition_loading_context(dynamic_partitions_store=instance),
    ):
        result = retrain_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def runs(result: dg.SensorResult) -> list[tuple[str, str]]:
    return [(r.partition_key, r.run_key) for r in result.run_requests]


def test_threshold_requests_one_run_for_that_task_only(instance, settings):
    assert settings.retrain_threshold == 50
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 49, 0), ("summarize", 10, 100))

    first = tick(instance, settings, None)
    assert runs(first) == []

    write_partition(settings.lake_dir, "2024-03-02", ("qa", 1, 49))
    second = tick(instance, settings, first.cursor)
    assert runs(second) == [("qa", f"retrain:qa:{ingested_at(49)}")]
    assert second.run_requests[0].tags["ft_pipeline/new_examples"] == "50"


def test_new_tasks_become_partitions(instance, settings):
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 3, 0))
    first = tick(instance, settings, None)
    assert [r.partition_keys for r in first.dynamic_partitions_requests] == [["qa"]]
    assert instance.get_dynamic_partitions(task_partitions.name) == ["qa"]

    write_partition(settings.lake_dir, "2024-03-02", ("translate", 2, 10))
    second = tick(instance, settings, first.cursor)
    assert [r.partition_keys for r in second.dynamic_partitions_requests] == [["translate"]]

    assert tick(instance, settings, second.cursor).dynamic_partitions_requests == []


def test_same_tick_twice_never_requests_the_same_run_twice(instance, settings):
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 60, 0))

    first = tick(instance, settings, None)
    replayed = tick(instance, settings, None)  # a tick retried before its cursor was stored
    assert runs(first) == runs(replayed)  # same run key: the daemon launches it once
    assert runs(tick(instance, settings, first.cursor)) == []


def test_count_restarts_after_a_retrain(instance, settings):
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 50, 0))
    cursor = tick(instance, settings, None).cursor

    write_adapter(settings.adapters_dir, "qa", 1, ingested_at(49))
    write_partition(settings.lake_dir, "2024-03-02", ("qa", 49, 50))
    after_retrain = tick(instance, settings, cursor)
    assert runs(after_retrain) == []

    write_partition(settings.lake_dir, "2024-03-03", ("qa", 1, 99))
    assert runs(tick(instance, settings, after_retrain.cursor)) == [("qa", f"retrain:qa:{ingested_at(99)}")]


def test_restart_keeps_the_cursor(instance, settings):
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 30, 0))
    stored = tick(instance, settings, None).cursor

    # a restarted daemon builds a new context from the stored cursor alone
    write_partition(settings.lake_dir, "2024-03-02", ("qa", 20, 30))
    restarted = tick(instance, settings, stored)
    assert runs(restarted) == [("qa", f"retrain:qa:{ingested_at(49)}")]


def test_a_tick_reads_only_new_files(instance, settings, monkeypatch):
    for day in range(1, 8):
        write_partition(settings.lake_dir, f"2024-03-0{day}", ("qa", 5, day * 10))
    cursor = tick(instance, settings, None).cursor
    read: list[str] = []
    count_file = retrain._count_file
    monkeypatch.setattr(retrain, "_count_file", lambda path, *rest: read.append(path.parent.name) or count_file(path, *rest))

    cursor = tick(instance, settings, cursor).cursor
    assert read == []

    write_partition(settings.lake_dir, "2024-03-08", ("qa", 5, 80))
    tick(instance, settings, cursor)
    assert read == ["date=2024-03-08"]


def test_a_task_being_trained_is_not_requested_until_that_training_ends(instance, settings):
    from dagster._core.test_utils import create_run_for_test

    from ft_pipeline.core.locks import hold

    write_partition(settings.lake_dir, "2024-03-01", ("qa", 60, 0), ("summarize", 60, 100))
    # qa is trained outside Dagster (its lock is held); summarize by a run this instance has in progress
    started = create_run_for_test(
        instance, job_name="retrain_job", status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "summarize"}
    )
    with hold(settings.root, "train-qa"):
        busy = tick(instance, settings, None)
    assert runs(busy) == []
    instance.report_run_failed(started)
    after = tick(instance, settings, busy.cursor)
    assert sorted(key for key, _ in runs(after)) == ["qa", "summarize"]


def write_users(lake_dir: Path, date: str, *groups: tuple[str, str, int, int]) -> None:
    """One settlements partition in the full settlements schema; each (task, user, n, start) adds n rows of that user."""
    import pyarrow as pa

    from ft_pipeline.core.io import partition_file, write_parquet_atomic
    from ft_pipeline.core.settlements import SCHEMA
    from ft_pipeline_tests.conftest import settlement
    from ft_pipeline_tests.retrain_fixtures import T0

    rows = [
        settlement(f"{user}-{start + i}", task=task, user_id=user, ingested_at=T0 + timedelta(seconds=start + i))
        for task, user, n, start in groups
        for i in range(n)
    ]
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=SCHEMA), partition_file(lake_dir, "settlements", date))


def test_segments_retrain_at_the_threshold_one_segment_only(instance, tmp_path):
    settings = Settings.from_env(data_dir=str(tmp_path), segment_by="user_id", segment_min_examples=30)
    # the task has 99 examples in all, so it is due too; of its users only ana reaches 50, ben stays at 49
    write_users(settings.lake_dir, "2024-03-01", ("qa", "ana", 40, 0), ("qa", "ben", 49, 100), ("qa", "kim@example.com", 9, 200))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FT_SEGMENT_BY", "user_id")
        patch.setenv("FT_SEGMENT_MIN_EXAMPLES", "30")
        first = tick(instance, settings, None)
        # ben qualifies (49 >= 30) and gets his partition, but is not due before 50; PII never becomes a segment
        assert runs(first) == [("qa", f"retrain:qa:{ingested_at(208)}")]
        assert set(instance.get_dynamic_partitions(task_partitions.name)) == {"qa", "qa.ben", "qa.ana"}
        write_users(settings.lake_dir, "2024-03-02", ("qa", "ana", 10, 40))
        second = tick(instance, settings, first.cursor)
    assert runs(second) == [("qa.ana", f"retrain:qa.ana:{ingested_at(49)}")]
    assert second.run_requests[0].tags["ft_pipeline/new_examples"] == "50"


def test_switching_segments_on_counts_the_files_read_before_again(tmp_path):
    from ft_pipeline.core.retrain import RetrainState, scan_settlements

    lake, adapters = tmp_path / "lake", tmp_path / "adapters"
    write_users(lake, "2024-03-01", ("qa", "ana", 5, 0))
    state = RetrainState()
    assert set(scan_settlements(state, lake, adapters).counts) == {"qa"}
    scan = scan_settlements(state, lake, adapters, segment_by="user_id")
    assert scan.files_read == 1 and scan.counts["qa.ana"].count == 5

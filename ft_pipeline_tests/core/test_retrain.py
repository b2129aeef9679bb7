"""Tests of the incremental new-example counter behind the retrain sensor."""

from pathlib import Path

import pytest

from ft_pipeline.core.freshness import new_examples_count
from ft_pipeline.core.retrain import RetrainState, due_retrains, retrain_run_key, scan_settlements
from ft_pipeline.settings import Settings
from ft_pipeline_tests.retrain_fixtures import ingested_at, write_adapter, write_partition


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "lake", tmp_path / "adapters"


def test_counts_every_row_without_adapter_and_reads_each_file_once(dirs):
    lake, adapters = dirs
    write_partition(lake, "2024-03-01", ("qa", 30, 0), ("summarize", 5, 100))
    write_partition(lake, "2024-03-02", ("qa", 20, 30))
    state = RetrainState()

    scan = scan_settlements(state, lake, adapters)

    assert scan.files_read == 2
    assert scan.counts["qa"].count == 50
    assert scan.counts["qa"].newest == ingested_at(49)
    assert scan.counts["summarize"].count == 5
    assert scan_settlements(state, lake, adapters).files_read == 0


def test_only_changed_or_new_files_are_read(dirs):
    lake, adapters = dirs
    write_partition(lake, "2024-03-01", ("qa", 10, 0))
    write_partition(lake, "2024-03-02", ("qa", 10, 10))
    state = RetrainState()
    scan_settlements(state, lake, adapters)

    write_partition(lake, "2024-03-02", ("qa", 15, 10))  # late records rewrite a day
    write_partition(lake, "2024-03-03", ("qa", 4, 40))
    scan = scan_settlements(state, lake, adapters)

    assert scan.files_read == 2
    assert scan.counts["qa"].count == 29


def test_adapter_watermark_restarts_the_count_reading_only_files_past_it(dirs):
    lake, adapters = dirs
    write_partition(lake, "2024-03-01", ("qa", 30, 0), ("summarize", 3, 0))
    write_partition(lake, "2024-03-02", ("qa", 30, 30))
    state = RetrainState()
    scan_settlements(state, lake, adapters)

    write_adapter(adapters, "qa", 1, ingested_at(39))
    scan = scan_settlements(state, lake, adapters)

    assert scan.counts["qa"].count == 20
    assert scan.counts["qa"].watermark == ingested_at(39)
    assert scan.counts["summarize"].count == 3
    assert scan.files_read == 1  # 2024-03-01 holds nothing past the watermark


def test_state_survives_a_json_round_trip(dirs):
    lake, adapters = dirs
    write_partition(lake, "2024-03-01", ("qa", 7, 0))
    state = RetrainState()
    first = scan_settlements(state, lake, adapters)

    restored = RetrainState.from_json(state.to_json())
    again = scan_settlements(restored, lake, adapters)

    assert again.files_read == 0
    assert again.counts == first.counts


def test_deleted_partition_drops_out_of_the_count(dirs):
    lake, adapters = dirs
    write_partition(lake, "2024-03-01", ("qa", 7, 0))
    gone = write_partition(lake, "2024-03-02", ("qa", 5, 7))
    state = RetrainState()
    scan_settlements(state, lake, adapters)

    gone.unlink()

    assert scan_settlements(state, lake, adapters).counts["qa"].count == 7


def test_due_retrains_requests_each_task_once_until_more_data_or_a_new_adapter(dirs):
    lake, adapters = dirs
    write_partition(lake, "2024-03-01", ("qa", 50, 0), ("summarize", 49, 100))
    state = RetrainState()

    due = due_retrains(state, scan_settlements(state, lake, adapters), threshold=50)
    assert [c.task for c in due] == ["qa"]
    assert retrain_run_key(due[0]) == f"retrain:qa:{ingested_at(49)}"
    assert due_retrains(state, scan_settlements(state, lake, adapters), threshold=50) == []

    write_partition(lake, "2024-03-02", ("qa", 49, 50))
    assert due_retrains(state, scan_settlements(state, lake, adapters), threshold=50) == []
    write_partition(lake, "2024-03-02", ("qa", 50, 50))
    assert [c.count for c in due_retrains(state, scan_settlements(state, lake, adapters), threshold=50)] == [100]

    write_adapter(adapters, "qa", 1, ingested_at(99))
    write_partition(lake, "2024-03-03", ("qa", 50, 200))
    due = due_retrains(state, scan_settlements(state, lake, adapters), threshold=50)
    assert [(c.task, c.count, c.newest) for c in due] == [("qa", 50, ingested_at(249))]


def test_incremental_counts_match_the_full_query(tmp_path):
    settings = Settings.from_env(data_dir=str(tmp_path))
    write_partition(settings.lake_dir, "2024-03-01", ("qa", 30, 0), ("summarize", 4, 0))
    state = RetrainState()
    scan_settlements(state, settings.lake_dir, settings.adapters_dir)
    write_adapter(settings.adapters_dir, "qa", 1, ingested_at(20))
    write_partition(settings.lake_dir, "2024-02-27", ("qa", 6, 500))  # a late record in an old day

    counts = scan_settlements(state, settings.lake_dir, settings.adapters_dir).counts

    assert (
        {task: c.count for task, c in counts.items()}
        == {task: new_examples_count(settings, task) for task in ("qa", "summarize")}
        == {"qa": 15, "summarize": 4}
    )


def test_a_tick_asks_only_tasks_with_a_new_adapter_for_their_watermark(dirs, monkeypatch):
    from ft_pipeline.core import retrain

    lake, adapters = dirs
    tasks = [f"qa.u{i:03d}" for i in range(200)]
    write_partition(lake, "2024-03-01", *((task, 1, 10 * i) for i, task in enumerate(tasks)))
    state = RetrainState()
    scan_settlements(state, lake, adapters)
    asked: list[str] = []
    read = retrain.adapter_watermark
    monkeypatch.setattr(retrain, "adapter_watermark", lambda folder, task: asked.append(task) or read(folder, task))

    assert scan_settlements(state, lake, adapters).files_read == 0 and asked == []
    write_adapter(adapters, "qa.u007", 1, ingested_at(70))
    scan = scan_settlements(state, lake, adapters)
    assert asked == ["qa.u007"] and scan.counts["qa.u007"].count == 0 and scan.counts["qa.u008"].count == 1
    # an index that was replaced (shorter than read so far): every known task is asked once more
    (adapters / "index.jsonl").write_text("")
    asked.clear()
    scan_settlements(state, lake, adapters)
    assert sorted(asked) == sorted(tasks)

import json

import duckdb
import pytest
from dagster import DagsterRunStatus, RunsFilter, instance_for_test

from ft_pipeline.cli import main
from ft_pipeline.core import aggregates
from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import table_glob
from ft_pipeline.core.settlements import build_partition
from ft_pipeline.runner import data_dates, day_blocks, run_pipeline, selected_keys
from ft_pipeline.settings import Settings


@pytest.fixture
def small_pipeline(tmp_path, monkeypatch):
    """Settings for an end-to-end run that fits in a test: a small demo inbox, short trainings."""
    env = {
        "FT_DATA_DIR": str(tmp_path / "data"),
        "FT_BUILTIN_PRETRAIN_STEPS": "60",
        "FT_BUILTIN_VOCAB_SIZE": "1024",
        "FT_MAX_STEPS": "30",
        "FT_EVAL_EVERY": "10",
        "FT_BATCH_SIZE": "8",
        "FT_EVAL_GENERATION_SAMPLES": "4",
        "FT_EVAL_MAX_NEW_TOKENS": "24",
        "FT_TORCH_THREADS": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def test_selection_syntax_resolves_to_asset_names():
    from ft_pipeline.definitions import defs

    assert selected_keys(defs, "raw_logs,settlements") == {"raw_logs", "settlements"}
    assert selected_keys(defs, "settlements+") == {"settlements", "daily_aggregates", "task_dataset", "base_model"}
    assert len(selected_keys(defs, "*")) == 10


def inbox_record(log_id: str, timestamp: str) -> str:
    """One inbox line of the call contract."""
    return json.dumps({"log_id": log_id, "timestamp": timestamp, "task": "chat", "prompt": "Hi?", "output": "Hello."}) + "\n"


def test_the_daily_stage_covers_only_days_with_new_files_or_stale_partitions(tmp_path):
    settings = Settings.from_env(data_dir=str(tmp_path / "data"))
    settings.inbox_dir.mkdir(parents=True)
    days = ["2026-01-01", "2026-01-02", "2026-01-05"]
    (settings.inbox_dir / "a.jsonl").write_text("".join(inbox_record(f"id-{d}", f"{d}T10:00:00Z") for d in days))
    assert data_dates(settings) == days
    assert day_blocks(days) == [["2026-01-01", "2026-01-02"], ["2026-01-05"]]

    ingest(settings)
    assert data_dates(settings) == days  # ingested, not settled yet
    for day in days:
        build_partition(settings, day)
        aggregates.write_day(settings.lake_dir, day)
    assert data_dates(settings) == []  # the file is in the manifest and every day is built

    (settings.inbox_dir / "b.jsonl").write_text(inbox_record("id-late", "2026-01-02T11:00:00Z"))
    assert data_dates(settings) == ["2026-01-02"]
    ingest(settings)
    assert data_dates(settings) == ["2026-01-02"]  # its raw_logs partition is newer than its settlements now
    build_partition(settings, "2026-01-02")
    assert data_dates(settings) == ["2026-01-02"]  # and its aggregates older than its settlements
    aggregates.write_day(settings.lake_dir, "2026-01-02")
    assert data_dates(settings) == []

    # feedback on a call of an older day: first its own file's day, then, once ingested, the day of the call
    late = {"kind": "feedback", "log_id": "id-2026-01-01", "feedback_at": "2026-01-20T09:00:00Z", "decision": "rejected"}
    (settings.inbox_dir / "feedback.jsonl").write_text(json.dumps(late) + "\n")
    assert data_dates(settings) == ["2026-01-20"]
    ingest(settings, days=["2026-01-20"])
    assert data_dates(settings) == ["2026-01-01"]
    build_partition(settings, "2026-01-01")
    aggregates.write_day(settings.lake_dir, "2026-01-01")
    assert data_dates(settings) == []

    # a file with no record of a partition day still gets an ingest, which quarantines it
    (settings.inbox_dir / "bad.jsonl").write_text("not json\n")
    assert len(data_dates(settings)) == 1


def test_the_main_job_ends_with_a_champion_and_a_rerun_changes_nothing(small_pipeline, tmp_path):
    settings = small_pipeline
    assert main(["demo", "--records", "1500", "--days", "10"]) == 0
    with instance_for_test() as instance:
        runs = run_pipeline("*", settings=settings, instance=instance, log=lambda line: None)
        assert runs and all(run.success for run in runs), [(r.assets, r.partitions, r.failed_steps) for r in runs]
        stored = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        assert {run.run_id for run in stored} == {run.run_id for run in runs}

    assert (settings.reports_dir / "pattern_report.json").is_file()
    assert_champion_beats_base(settings)

    before = pipeline_state(settings)
    with instance_for_test() as instance:
        again = run_pipeline("*", settings=settings, instance=instance, log=lambda line: None)
        assert all(run.success for run in again)
    assert not any("raw_logs" in run.assets for run in again), "a rerun with nothing new ingested or settled again"
    assert pipeline_state(settings) == before, "a second run over the same data changed the lake or trained again"


def pipeline_state(settings):
    """What a re-run over the same inbox must leave unchanged: lake rows, quarantine lines, adapter versions."""
    rows = {
        table: duckdb.sql(f"SELECT count(*) FROM read_parquet('{table_glob(settings.lake_dir, table)}')").fetchall()[0][0]
        for table in ("raw_logs", "settlements")
    }
    quarantined = sum(len(p.read_text().splitlines()) for p in settings.quarantine_dir.glob("*.jsonl"))
    adapters = sorted(str(p.relative_to(settings.adapters_dir)) for p in settings.adapters_dir.glob("*/[0-9]*"))
    return rows, quarantined, adapters


def assert_champion_beats_base(settings):
    """At least one task was promoted, and every promoted adapter beat the base model significantly."""
    champions = []
    for evaluation in sorted(settings.evaluations_dir.glob("*/[0-9]*.json")):
        result = json.loads(evaluation.read_text())
        if result["decision"] == "promote":
            champions.append(result)
    assert champions, "no task got a champion"
    for result in champions:
        assert result["scores"]["candidate"]["loss"] < result["scores"]["base"]["loss"]
        assert result["tests"]["vs_base"]["p_value"] < settings.promotion_p_value

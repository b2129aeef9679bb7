"""Tests of counting a task's settled examples newer than its latest adapter."""

import os
from datetime import UTC, datetime

import pyarrow as pa

from ft_pipeline.core.freshness import new_examples_count
from ft_pipeline.core.io import partition_file, write_json_atomic, write_parquet_atomic
from ft_pipeline.settings import Settings


def write_settlements(settings, date, rows):
    """One settlements partition holding (task, ingested_at ISO) rows."""
    table = pa.table(
        {
            "task": [task for task, _ in rows],
            "ingested_at": pa.array([datetime.fromisoformat(at) for _, at in rows], type=pa.timestamp("us", tz="UTC")),
        }
    )
    return write_parquet_atomic(table, partition_file(settings.lake_dir, "settlements", date))


def write_adapter(settings, task, watermark):
    write_json_atomic({"data_watermark": watermark, "version": 1}, settings.adapters_dir / task / "1" / "training_config.json")


def test_counts_rows_newer_than_the_adapter_watermark_including_late_ones(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    assert new_examples_count(settings, "qa") == 0
    write_settlements(
        settings,
        "2024-01-01",
        [("qa", "2024-01-01T10:00:00+00:00"), ("qa", "2024-01-05T10:00:00+00:00"), ("chat", "2024-01-05T10:00:00+00:00")],
    )
    write_settlements(settings, "2024-01-04", [("qa", "2024-01-04T10:00:00+00:00"), ("qa", "2024-01-04T12:00:00+00:00")])
    assert new_examples_count(settings, "qa") == 4  # no adapter yet: every example is new
    write_adapter(settings, "qa", "2024-01-04T10:00:00+00:00")
    # the late record (ingested on the 5th into the 1st's partition) counts; the one at the watermark does not
    assert new_examples_count(settings, "qa") == 2
    assert new_examples_count(settings, "chat") == 1


def test_files_written_before_the_watermark_are_not_read(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    old = write_settlements(settings, "2024-01-01", [("qa", "2024-02-01T00:00:00+00:00")])
    write_settlements(settings, "2024-01-02", [("qa", "2024-02-01T00:00:00+00:00")])
    write_adapter(settings, "qa", "2024-01-15T00:00:00+00:00")
    assert new_examples_count(settings, "qa") == 2
    stamp = datetime(2024, 1, 10, tzinfo=UTC).timestamp()
    os.utime(old, (stamp, stamp))
    assert new_examples_count(settings, "qa") == 1

"""Retention: raw_logs and feedback partitions and quarantine files older than their knobs go; settlements stay; off by default."""

import os
import shutil
import time
from datetime import date

from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.retention import expire
from ft_pipeline.settings import Settings
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs

TODAY = date(2024, 3, 31)
DAYS = ["2024-01-01", "2024-03-01", "2024-03-30"]


def _lake(tmp_path):
    settings = Settings.from_env(env={}, data_dir=str(tmp_path))
    for day in DAYS:
        write_raw_logs(settings.lake_dir, day, [raw_log(f"r-{day}", timestamp=f"{day}T12:00:00+00:00")])
        for table in ("settlements", "feedback"):  # any parquet file stands for their partitions here
            partition_file(settings.lake_dir, table, day).parent.mkdir(parents=True)
            shutil.copy(partition_file(settings.lake_dir, "raw_logs", day), partition_file(settings.lake_dir, table, day))
    old, fresh = settings.quarantine_dir / "old.jsonl", settings.quarantine_dir / "settlements" / "date=2024-03-30.jsonl"
    fresh.parent.mkdir(parents=True)
    old.write_text("{}\n")
    fresh.write_text("{}\n")
    long_ago = time.time() - 40 * 86400
    os.utime(old, (long_ago, long_ago))
    return settings


def test_everything_is_kept_by_default(tmp_path):
    settings = _lake(tmp_path)
    expired = expire(settings, today=TODAY)
    assert (expired.raw_logs, expired.feedback, expired.quarantine) == ([], [], [])
    assert partition_dates(settings.lake_dir, "raw_logs") == DAYS


def test_old_partitions_and_quarantine_files_expire_and_settlements_stay(tmp_path):
    settings = _lake(tmp_path).replace(raw_retention_days=20, feedback_retention_days=60, quarantine_retention_days=30)
    expired = expire(settings, today=TODAY)
    assert expired.raw_logs == ["2024-01-01", "2024-03-01"] and expired.feedback == ["2024-01-01"]
    assert expired.quarantine == ["old.jsonl"]
    assert partition_dates(settings.lake_dir, "raw_logs") == ["2024-03-30"]
    assert partition_dates(settings.lake_dir, "feedback") == ["2024-03-01", "2024-03-30"]
    assert partition_dates(settings.lake_dir, "settlements") == DAYS  # the lineage of the datasets
    assert [p.name for p in settings.quarantine_dir.rglob("*.jsonl")] == ["date=2024-03-30.jsonl"]
    assert list((settings.root / ".scratch").iterdir()) == []
    assert expire(settings, today=TODAY).raw_logs == []

"""Retention: raw_logs and feedback partitions and quarantine files older than their knob's days are deleted (off by default).

Ages count back from today (UTC), whatever the lake holds: a partition of day D goes once D is more than N days
before today, a quarantine file once it was last written more than N days ago. Settlements and datasets are kept:
they are the lineage of the adapters trained on them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ft_pipeline.core.io import partition_dates, partition_dir
from ft_pipeline.core.locks import hold
from ft_pipeline.core.scratch import scratch_dir
from ft_pipeline.settings import Settings

RAW_TABLE = "raw_logs"
FEEDBACK_TABLE = "feedback"


@dataclass
class Expired:
    """What one retention pass deleted."""

    raw_logs: list[str] = field(default_factory=list)  # partition days
    feedback: list[str] = field(default_factory=list)  # partition days
    quarantine: list[str] = field(default_factory=list)  # files, relative to the quarantine folder


def expire(settings: Settings, today: date | None = None) -> Expired:
    """Delete what is older than the retention knobs allow; a knob at 0 or empty keeps everything."""
    today = today or datetime.now(UTC).date()
    # the ingest writes raw_logs and feedback partitions and reads them whole: none is deleted under a running one
    with hold(settings.root, "ingest"):
        raw = _expire_partitions(settings, RAW_TABLE, settings.raw_retention_days, today)
        feedback = _expire_partitions(settings, FEEDBACK_TABLE, settings.feedback_retention_days, today)
    return Expired(
        raw_logs=raw,
        feedback=feedback,
        quarantine=_expire_quarantine(settings, settings.quarantine_retention_days),
    )


def _expire_partitions(settings: Settings, table: str, days: int | None, today: date) -> list[str]:
    """Delete the partitions of `table` older than `days` days before today; returns their days."""
    if not days:
        return []
    cutoff = (today - timedelta(days=days)).isoformat()
    old = [d for d in partition_dates(settings.lake_dir, table) if d < cutoff]
    if old:
        # each partition leaves the lake by one rename, so a reader sees it whole or not at all
        with scratch_dir(settings.root, "retention") as bin_dir:
            for d in old:
                os.replace(partition_dir(settings.lake_dir, table, d), bin_dir / d)
    return old


def _expire_quarantine(settings: Settings, days: int | None) -> list[str]:
    """Delete the quarantine files last written more than `days` days ago; returns their paths in the quarantine folder."""
    root = Path(settings.quarantine_dir)
    if not days or not root.is_dir():
        return []
    cutoff = time.time() - days * 86400
    old = sorted(p for p in root.rglob("*.jsonl") if p.is_file() and p.stat().st_mtime < cutoff)
    for path in old:
        path.unlink(missing_ok=True)
    return [p.relative_to(root).as_posix() for p in old]

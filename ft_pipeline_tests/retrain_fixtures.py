"""Settlements partitions with chosen ingestion times, and fake adapters, for the retrain counter, sensor and schedules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from ft_pipeline.core.io import partition_file, write_parquet_atomic
from ft_pipeline.core.lineage import record_adapter
from ft_pipeline_tests.conftest import SETTLEMENT_SCHEMA, settlement

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def ingested_at(offset: int) -> str:
    """ISO ingestion time of the row written with `offset` seconds after T0."""
    return (T0 + timedelta(seconds=offset)).isoformat()


def write_partition(lake_dir: Path, date: str, *groups: tuple[str, int, int]) -> Path:
    """Write (or replace) one settlements partition; each (task, n, start) adds n rows ingested at T0 + start.. s."""
    rows = [
        settlement(f"{task}-{start + i}", task=task, ingested_at=T0 + timedelta(seconds=start + i))
        for task, n, start in groups
        for i in range(n)
    ]
    return write_parquet_atomic(
        pa.Table.from_pylist(rows, schema=SETTLEMENT_SCHEMA), partition_file(lake_dir, "settlements", date)
    )


def write_adapter(adapters_dir: Path, task: str, version: int, data_watermark: str) -> Path:
    """A fake adapter folder holding only the training config that the lineage helpers read, recorded in the index as
    a training records it."""
    path = Path(adapters_dir) / task / str(version) / "training_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data_watermark": data_watermark, "version": version}), encoding="utf-8")
    record_adapter(adapters_dir, task, version, data_watermark)
    return path

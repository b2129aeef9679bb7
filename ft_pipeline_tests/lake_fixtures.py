"""Tiny raw_logs partitions built straight from dicts, in the lake's raw_logs schema, for tests of the stages after ingest."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from ft_pipeline.core.io import partition_file, write_parquet_atomic
from ft_pipeline.core.schema import RAW_LOG_SCHEMA

DEFAULT_DATE = "2024-01-15"


def raw_log(log_id: str, **fields: Any) -> dict[str, Any]:
    """One raw_logs row: an accepted 'chat' record at noon of DEFAULT_DATE, overridden by `fields`.

    `timestamp`/`ingested_at` take a datetime or an ISO string; `messages`, `metadata` and `extra` take
    Python objects (stored as JSON text) or text; `decision=None` becomes 'pending' as ingest does.
    """
    row: dict[str, Any] = {
        "log_id": log_id,
        "timestamp": f"{DEFAULT_DATE}T12:00:00+00:00",
        "task": "chat",
        "prompt": f"Question {log_id}: how do I boil an egg?",
        "output": "Put the egg in boiling water for nine minutes, then cool it in cold water.",
        "decision": "accepted",
        "source_file": "inbox/test.jsonl",
    }
    row.update(fields)
    row["decision"] = row["decision"] or "pending"
    for name in ("timestamp", "ingested_at"):
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    row.setdefault("ingested_at", row["timestamp"])
    for name in ("messages", "metadata", "extra"):
        if row.get(name) is not None and not isinstance(row[name], str):
            row[name] = json.dumps(row[name], ensure_ascii=False)
    row.setdefault("content_hash", hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest())
    unknown = set(row) - set(RAW_LOG_SCHEMA.names)
    if unknown:
        raise KeyError(f"not raw_logs columns: {sorted(unknown)}")
    return row


def raw_logs_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A raw_logs table from rows made by `raw_log` (absent columns are null)."""
    return pa.Table.from_pylist(rows, schema=RAW_LOG_SCHEMA)


def write_raw_logs(lake_dir: Path, date: str, rows: list[dict[str, Any]]) -> Path:
    """Write (or replace) the raw_logs partition of `date` with `rows`; returns the parquet path."""
    return write_parquet_atomic(raw_logs_table(rows), partition_file(lake_dir, "raw_logs", date))

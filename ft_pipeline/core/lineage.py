"""What each task's dataset and adapters were built from: small JSON records read without heavy imports."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from ft_pipeline.core.segments import checked_model_key

DATASET_MANIFEST = "manifest.json"
ADAPTER_CONFIG = "training_config.json"
ADAPTER_INDEX = "index.jsonl"


def dataset_dir(datasets_dir: Path, task: str) -> Path:
    """Folder of one task's dataset files."""
    return Path(datasets_dir) / checked_model_key(task)


def read_dataset_manifest(datasets_dir: Path, task: str) -> dict[str, Any] | None:
    """The manifest of a task's current dataset (version, sizes, data watermark), or None before the first build."""
    path = dataset_dir(datasets_dir, task) / DATASET_MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def adapter_versions(adapters_dir: Path, task: str) -> list[int]:
    """Registered adapter versions of a task that have a complete folder, ascending."""
    base = Path(adapters_dir) / checked_model_key(task)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / ADAPTER_CONFIG).is_file())


def adapter_dir(adapters_dir: Path, task: str, version: int | str) -> Path:
    """Folder of one adapter version: adapters/<task>/<version>/."""
    if not str(version).isdigit():
        raise ValueError(f"adapter version {version!r} must be a model registry version number")
    return Path(adapters_dir) / checked_model_key(task) / str(int(version))


def read_adapter_config(adapters_dir: Path, task: str, version: int | str) -> dict[str, Any]:
    """The training config saved with an adapter (hyperparameters, base model, dataset version, data watermark)."""
    return json.loads((adapter_dir(adapters_dir, task, version) / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def latest_adapter(adapters_dir: Path, task: str) -> dict[str, Any] | None:
    """Training config of the newest adapter of a task, with its `version`, or None when it has none."""
    versions = adapter_versions(adapters_dir, task)
    if not versions:
        return None
    return {**read_adapter_config(adapters_dir, task, versions[-1]), "version": versions[-1]}


def record_adapter(adapters_dir: Path, task: str, version: int, watermark: str | None) -> None:
    """Append a newly stored adapter to adapters/index.jsonl, the log the retrain counter follows new adapters by
    (instead of asking every task's and segment's folder on each tick)."""
    index = Path(adapters_dir) / ADAPTER_INDEX
    line = json.dumps({"task": checked_model_key(task), "version": int(version), "data_watermark": watermark}) + "\n"
    # one O_APPEND write per line: concurrent trainings never interleave or overwrite each other's lines
    fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def adapters_since(adapters_dir: Path, offset: int) -> tuple[list[str], int] | None:
    """The tasks of the adapters recorded after byte `offset` of the index, and its new end; None when the index is
    shorter than `offset` (it was replaced), so the caller asks every folder again."""
    index = Path(adapters_dir) / ADAPTER_INDEX
    size = index.stat().st_size if index.is_file() else 0
    if size < offset:
        return None
    if size == offset:
        return [], offset
    with open(index, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size - offset)
    # a line still being appended (no newline yet) is read on the next call
    complete = data[: data.rfind(b"\n") + 1]
    tasks = [json.loads(line)["task"] for line in complete.decode("utf-8").splitlines() if line.strip()]
    return tasks, offset + len(complete)


def adapter_watermark(adapters_dir: Path, task: str) -> str | None:
    """The data watermark (max ingested_at of the settlements used) of the task's latest adapter, or None."""
    adapter = latest_adapter(adapters_dir, task)
    return adapter.get("data_watermark") if adapter else None


@overload
def parse_time(value: str | datetime) -> datetime: ...
@overload
def parse_time(value: Any) -> datetime | None: ...
def parse_time(value: Any) -> datetime | None:
    """A timezone-aware UTC datetime from a datetime or an ISO-8601 string (naive means UTC); None stays None."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

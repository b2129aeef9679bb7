"""Atomic file writes and the lake's partition layout."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PARTITION_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The one file of each daily partition.
PART_FILE = "part-0.parquet"


def checked_name(name: str, what: str = "task") -> str:
    """`name` when it is a safe single path component (the contract's task pattern), else ValueError."""
    # fullmatch: with match, the pattern's `$` would accept a name ending in a newline
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(f"{what} name {name!r} must match {TASK_NAME.pattern}")
    return name


def checked_date(date: str) -> str:
    """`date` when it is a partition date (YYYY-MM-DD), else ValueError."""
    if not isinstance(date, str) or not PARTITION_DATE.fullmatch(date):
        raise ValueError(f"partition date {date!r} must be YYYY-MM-DD")
    return date


def partition_dir(lake_dir: Path, table: str, date: str) -> Path:
    """Folder of one daily partition: <lake>/<table>/date=YYYY-MM-DD."""
    return Path(lake_dir) / checked_name(table, "table") / f"date={checked_date(date)}"


def partition_file(lake_dir: Path, table: str, date: str) -> Path:
    """The single parquet file that holds one daily partition."""
    return partition_dir(lake_dir, table, date) / PART_FILE


def partition_dates(lake_dir: Path, table: str) -> list[str]:
    """Dates of the partitions of `table` that hold a parquet file, sorted."""
    return list(partition_stamps(lake_dir, table))


def partition_stamps(lake_dir: Path, table: str) -> dict[str, list[int]]:
    """The stamp of each partition of `table` that holds a parquet file, by date, sorted, from one listing of the
    table's folder (a lake of years has thousands)."""
    try:
        entries = list(os.scandir(os.path.join(lake_dir, table)))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    dated = sorted((e.name[5:], e.path) for e in entries if e.name.startswith("date=") and PARTITION_DATE.fullmatch(e.name[5:]))
    return {date: stamp for date, folder in dated if (stamp := _stamp(os.path.join(folder, PART_FILE)))}


def partition_stamp(lake_dir: Path, table: str, date: str) -> list[int] | None:
    """[mtime_ns, size] of one partition's parquet file, what tells one version of it from another; None without one."""
    return _stamp(partition_file(lake_dir, table, date))


def _stamp(path: str | Path) -> list[int] | None:
    """[mtime_ns, size] of a file; None without one."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [stat.st_mtime_ns, stat.st_size]


def table_glob(lake_dir: Path, table: str) -> str:
    """A glob over every partition file of `table`, for DuckDB's read_parquet."""
    return str(Path(lake_dir) / table / "date=*" / "*.parquet")


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` that replaces it only when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporary files `atomic_path` left beside `target` in killed runs; only for a caller holding its writers' lock."""
    stale = sorted(Path(target).parent.glob(f".{Path(target).name}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_parquet_atomic(table: pa.Table, target: Path) -> Path:
    """Write `table` to `target` as parquet; readers see the old file or the whole new one."""
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(target)


def write_text_atomic(text: str, target: Path) -> Path:
    """Write `text` to `target` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(value: Any, target: Path) -> Path:
    """Write `value` as indented JSON to `target` atomically."""
    return write_text_atomic(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n", target)


class RawJson:
    """JSON text written as it is from the buffers that hold it, in a value written by write_large_json_atomic."""

    def __init__(self, *parts: bytes | memoryview) -> None:
        self.parts = parts


# What stands for a RawJson in orjson's output: a NUL byte, which orjson writes only escaped, inside a string.
_SPLICE = b"\x00"


def write_large_json_atomic(value: Any, target: Path) -> Path:
    """Write `value` as indented JSON to `target` atomically with orjson, as write_json_atomic does but with NaN as
    null and each RawJson in it written from its buffers: the json module indents in pure Python, thirty times slower
    on a report of a year of users, and the report's 50 MB of users are written where they lie, not copied."""
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME
    raws: list[RawJson] = []

    def default(item: Any) -> Any:
        if isinstance(item, RawJson):
            raws.append(item)
            return orjson.Fragment(_SPLICE)
        return str(item)

    pieces = orjson.dumps(value, default=default, option=options).split(_SPLICE)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(pieces[0])
        for raw, piece in zip(raws, pieces[1:], strict=True):
            fh.writelines(raw.parts)
            fh.write(piece)
        fh.write(b"\n")
    return Path(target)


def write_jsonl_atomic(rows: Any, target: Path) -> int:
    """Write an iterable of JSON-serialisable rows as JSONL atomically; returns the row count."""
    count = 0
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[Any]:
    """Rows of a JSONL file (empty when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def replace_dir_atomic(staging: Path, target: Path) -> Path:
    """Move a fully written folder `staging` into place at `target`, replacing what was there."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        shutil.rmtree(old)
    return target

"""The inbox manifest: every inbox file ingested whole (name, size, content hash, when, by which run), stored atomically."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ft_pipeline.core.io import write_parquet_atomic

MANIFEST_FILE = "inbox_manifest.parquet"
SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),  # path under the inbox when it was ingested
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
        pa.field("run_id", pa.string()),
        pa.field("archived", pa.string()),  # path under the inbox it was moved to; null while it stays in place
    ]
)


@dataclass
class Entry:
    """One ingested inbox file."""

    source: str
    size: int
    mtime_ns: int
    sha256: str
    ingested_at: datetime
    run_id: str
    archived: str | None = None

    def same_stat(self, st: os.stat_result) -> bool:
        """Whether a file's size and modification time are the ones ingested: then it is not read, nor even hashed."""
        return self.size == st.st_size and self.mtime_ns == st.st_mtime_ns


def manifest_path(state_dir: Path) -> Path:
    """The manifest file under the state folder."""
    return Path(state_dir) / MANIFEST_FILE


def load(state_dir: Path) -> dict[str, Entry]:
    """The manifest's entries by source name; empty when there is none yet."""
    path = manifest_path(state_dir)
    if not path.is_file():
        return {}
    return {row["source"]: Entry(**row) for row in pq.read_table(path, schema=SCHEMA).to_pylist()}


def save(entries: dict[str, Entry], state_dir: Path) -> Path:
    """Write the whole manifest atomically: readers see the old one or the new one."""
    rows = [asdict(e) for _, e in sorted(entries.items())]
    return write_parquet_atomic(pa.Table.from_pylist(rows, schema=SCHEMA), manifest_path(state_dir))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (as stored: a gzip file's compressed bytes); OSError for anything but a regular file."""
    # never through a symlink, and never blocking on a FIFO swapped in since the file was listed
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        return hashlib.file_digest(fh, "sha256").hexdigest()


def is_ingested(entries: dict[str, Entry], source: str, path: Path, st: os.stat_result) -> bool:
    """Whether the inbox file `source` holds what the manifest says was ingested: same size and time, else same bytes.

    A file rewritten with the same bytes (touched, copied again) gets its new modification time recorded.
    """
    entry = entries.get(source)
    if entry is None or entry.size != st.st_size:
        return False
    if entry.same_stat(st):
        return True
    if file_sha256(path) != entry.sha256:
        return False
    entry.mtime_ns = st.st_mtime_ns
    return True


def pending_files(inbox_dir: Path, entries: dict[str, Entry], files: list[Path]) -> dict[str, tuple[Path, os.stat_result]]:
    """Inbox `files` not ingested whole yet (new, or changed in size or time since), by name, with their stat.

    Judged by size and time only, never by reading: a file touched with the same bytes is re-read by the ingest, which
    finds it unchanged by its hash.
    """
    pending = {}
    for path in files:
        try:
            name, st = path.relative_to(inbox_dir).as_posix(), path.stat()
        except FileNotFoundError:  # archived by an ingest since it was listed
            continue
        if name not in entries or not entries[name].same_stat(st):
            pending[name] = (path, st)
    return pending

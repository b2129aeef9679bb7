"""Private staging folders outside the lake, each locked by its live owner; the next run of a stage sweeps dead owners' ones."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRATCH_DIR = ".scratch"
KIND = re.compile(r"[a-z][a-z0-9_]{0,40}")


def scratch_root(data_dir: Path) -> Path:
    """Where staging folders live: under the data dir (one filesystem, so a finished file moves by rename), outside the lake."""
    return Path(data_dir) / SCRATCH_DIR


@contextmanager
def scratch_dir(data_dir: Path, kind: str) -> Iterator[Path]:
    """A fresh staging folder for one stage run, removed when the block ends; locked while this process lives."""
    if not KIND.fullmatch(kind):
        raise ValueError(f"scratch kind {kind!r} must match {KIND.pattern}")
    root = scratch_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    # the lock exists and is held before the folder does: a sweeper never sees an unlocked live folder
    fd, lock = tempfile.mkstemp(prefix=f"{kind}-", suffix=".lock", dir=root)
    fcntl.flock(fd, fcntl.LOCK_EX)
    folder = Path(lock.removesuffix(".lock"))
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.unlink(lock)
        os.close(fd)


def sweep(data_dir: Path, kind: str) -> list[Path]:
    """Remove the staging folders of `kind` whose owners died (their lock is free); returns what was removed."""
    root = scratch_root(data_dir)
    removed = []
    for lock in sorted(root.glob(f"{kind}-*.lock")) if root.is_dir() else []:
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:  # its owner finished meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live run's
            os.close(fd)
            continue
        try:
            folder = Path(str(lock).removesuffix(".lock"))
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return removed

"""Cross-process locks that serialize the writers of one partition, task or store, for callers inside and outside Dagster."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCKS_DIR = ".locks"
LOCK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,200}")

# flock conflicts between two descriptors of one process too: a lock this thread holds is taken again for free,
# while another thread of the process waits like another process would
_held: dict[tuple[Path, int], int] = {}
_guard = threading.Lock()


class LockBusy(RuntimeError):
    """Another process holds a lock that the caller would not wait for."""


def lock_path(data_dir: Path, name: str) -> Path:
    """The lock file of `name` under the data dir; names are built from checked task names and dates."""
    if not LOCK_NAME.fullmatch(name):
        raise ValueError(f"lock name {name!r} must match {LOCK_NAME.pattern}")
    return Path(data_dir) / LOCKS_DIR / f"{name}.lock"


def holder(path: Path) -> str:
    """Who holds (or last held) a lock, as its file records it."""
    try:
        info = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}" if info else "another process"


@contextmanager
def hold(data_dir: Path, name: str, timeout: float | None = None, poll: float = 0.05) -> Iterator[Path]:
    """Hold the named lock for the block: wait up to `timeout` seconds (None: as long as it takes), else LockBusy.

    The kernel releases the lock when its process dies, so a killed run never leaves a lock behind.
    """
    path = lock_path(data_dir, name)
    key = (path, threading.get_ident())
    with _guard:
        again = key in _held
        if again:
            _held[key] += 1
    if again:
        try:
            yield path
        finally:
            with _guard:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockBusy(f"{name} is held by {holder(path)}") from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        stamp = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.write(fd, json.dumps(stamp).encode())
        with _guard:
            _held[key] = 1
        try:
            yield path
        finally:
            with _guard:
                del _held[key]
    finally:
        os.close(fd)  # releases the lock


def is_free(path: Path) -> bool:
    """Whether nobody holds the lock file at `path` (taken and dropped at once to find out)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)

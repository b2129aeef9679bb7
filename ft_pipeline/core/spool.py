"""Spool files of the logging client: names that say which process owns them, publishing, and recovery of dead writers'."""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# spool files live inside the inbox so that publishing is a rename on one filesystem; the hidden folder and the
# .part suffix keep readers that glob *.jsonl from ever seeing them
SPOOL_DIR = ".spool"
SPOOL_SUFFIX = ".jsonl.part"
PUBLISHED_PREFIX = "client"
RECOVERED_PREFIX = "client-recovered"

# the host is matched greedily: a sanitised host name may itself hold "__", the pid and the hex uuid never do
OWNED_NAME = re.compile(r"(?P<host>[A-Za-z0-9_.-]+)__(?P<pid>[0-9]+)__[0-9a-f]{32}" + re.escape(SPOOL_SUFFIX))
# the names spools had before they named their host: always written on the host that reads them
LEGACY_NAME = re.compile(r"(?P<pid>[0-9]+)-[0-9a-f]{32}" + re.escape(SPOOL_SUFFIX))


@dataclass(frozen=True)
class SpoolOwner:
    """The host and process that write a spool file."""

    host: str
    pid: int


def host_name() -> str:
    """This machine's host name as spool names spell it."""
    # a name without a host could never be matched to this host again, so an empty host name gets a placeholder
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "unnamed-host"


def new_spool_name(pid: int) -> str:
    """A unique spool file name owned by process `pid` of this host."""
    return f"{host_name()}__{pid}__{uuid.uuid4().hex}{SPOOL_SUFFIX}"


def spool_owner(name: str) -> SpoolOwner | None:
    """Who owns the spool file of that name; None for a name no writer gives a spool."""
    if match := OWNED_NAME.fullmatch(name):
        return SpoolOwner(match["host"], int(match["pid"]))
    if match := LEGACY_NAME.fullmatch(name):
        return SpoolOwner(host_name(), int(match["pid"]))
    return None


def process_alive(pid: int) -> bool:
    """Whether a process with that pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # it exists but belongs to another user
        pass
    return True


def publish_spool(spool: Path, inbox_dir: Path, prefix: str, pid: int) -> Path:
    """Move a spool file into the inbox as `<prefix>-<UTC stamp>-<pid>-<random>.jsonl`; one rename, so readers see all or nothing."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = Path(inbox_dir) / f"{prefix}-{stamp}-{pid}-{uuid.uuid4().hex[:12]}.jsonl"
    os.rename(spool, target)
    return target


def recover_spools(inbox_dir: str | Path) -> list[Path]:
    """Publish the spool files of this host's dead writers into the inbox and remove their empty ones; returns the new inbox files."""
    inbox = Path(inbox_dir)
    try:
        names = sorted(os.listdir(inbox / SPOOL_DIR))
    except FileNotFoundError:
        return []
    host = host_name()
    recovered = []
    for name in names:
        owner = spool_owner(name)
        # another host may share the inbox folder, and this host cannot tell whether that host's processes live
        if owner is None or owner.host != host or process_alive(owner.pid):
            continue
        try:
            published = _recover(inbox / SPOOL_DIR / name, inbox, owner.pid)
        except FileNotFoundError:
            # another process recovered or removed it between the listing and now
            continue
        if published is not None:
            recovered.append(published)
    return recovered


def _recover(spool: Path, inbox: Path, pid: int) -> Path | None:
    """Publish one dead writer's spool file (a torn last line included, for ingest to quarantine), or remove it when empty."""
    with open(spool, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            os.unlink(spool)
            return None
        # the writer died before its own fsync: make the records durable before the name says they are published
        os.fsync(fh.fileno())
    return publish_spool(spool, inbox, RECOVERED_PREFIX, pid)

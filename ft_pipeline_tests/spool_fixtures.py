"""Spool files of dead writer processes, for the client's and the inbox sensor's recovery tests."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from ft_pipeline.core.spool import SPOOL_DIR, host_name


def dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def dead_spool(inbox: Path, lines: list[str], host: str | None = None, pid: int | None = None) -> Path:
    """A spool file of a dead process (default: a new one) on `host` (default: this host) holding those lines."""
    path = inbox / SPOOL_DIR / f"{host or host_name()}__{pid or dead_pid()}__{uuid.uuid4().hex}.jsonl.part"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path

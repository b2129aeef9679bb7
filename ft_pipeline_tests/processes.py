"""Helpers for tests that start real servers as processes: a free port, and waiting until one answers over HTTP."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(proc: subprocess.Popen, url: str, what: str, output: Callable[[], str] = str, tries: int = 600) -> None:
    """Poll `url` until it answers 200; RuntimeError, with `output()`, when `proc` exits first or it never answers."""
    for _ in range(tries):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {output()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url}")

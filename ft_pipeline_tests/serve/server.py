"""A real `ft-pipeline serve` process on a free loopback port, for tests that talk to it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, port: int, host: str = "127.0.0.1", **env: str) -> subprocess.Popen:
    """Start the server on `port` and wait until /healthz answers; the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ft_pipeline.cli", "--data-dir", str(data_dir), "serve", "--host", host, "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not answer /healthz")
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise


@contextmanager
def running_server(data_dir: Path, host: str = "127.0.0.1", **env: str) -> Iterator[str]:
    """Start the server, wait until /healthz answers, yield its base URL; stop it (SIGTERM, a clean shutdown) after."""
    port = free_port()
    proc = start_server(data_dir, port, host, **env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

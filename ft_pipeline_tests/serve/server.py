"""A real `ft-pipeline serve` process on a free loopback port, for tests that talk to it over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ft_pipeline_tests.processes import free_port, wait_for_http

REPO = Path(__file__).resolve().parents[2]


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
        output = lambda: proc.stdout.read() if proc.stdout else ""  # noqa: E731
        wait_for_http(proc, f"http://127.0.0.1:{port}/healthz", "the server", output, tries=300)
        return proc
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

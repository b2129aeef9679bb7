"""A private Redis server for the deploy tests: the distribution's server, installed when missing, on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ft_pipeline_tests.deploy.packages import installed
from ft_pipeline_tests.processes import free_port


def _answers(port: int) -> bool:
    """Whether a Redis server on the loopback `port` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def running_redis() -> Iterator[str]:
    """A fresh server listening on 127.0.0.1 only, keeping nothing on disk; yields its URL without a database number."""
    server = installed(lambda: shutil.which("redis-server"), "redis-server")
    root = Path(tempfile.mkdtemp(prefix="ft_redis_"))
    port = free_port()
    command = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(root)]
    with (root / "log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if _answers(port) or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not _answers(port):
            raise RuntimeError(f"redis-server did not start: {(root / 'log').read_text(errors='replace')[-2000:]}")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

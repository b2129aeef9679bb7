"""A private Postgres cluster for the deploy tests: the distribution's server, installed when missing, on a free port."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ft_pipeline_tests.deploy.packages import installed
from ft_pipeline_tests.processes import free_port


def _bin_dir() -> Path | None:
    """The folder of the Postgres server programs, if installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def postgres_bin_dir() -> Path:
    """The Postgres server programs, installed from the distribution's packages when missing (as root); else a skip."""
    return installed(_bin_dir, "postgresql")


@contextmanager
def running_postgres(databases: tuple[str, ...]) -> Iterator[str]:
    """A fresh cluster listening on 127.0.0.1 only, with `databases` created; yields its SQLAlchemy URL without a database name.

    The server refuses to run as root, so under root the cluster belongs to the `postgres` user of the package.
    """
    bin_dir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="ft_pg_"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        # the driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, and dagster-postgres brings psycopg2
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
        for name in databases:
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name], check=True)
        yield url
    finally:
        if data.is_dir():
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

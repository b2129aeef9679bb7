"""Server programs for the deploy tests from the distribution's packages: installed when missing (as root), else a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def installed(find: Callable[[], T | None], package: str) -> T:
    """What `find` finds, after `apt-get install package` when it finds nothing; a skip when that cannot be done."""
    found = find()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            subprocess.run(command, env=env, capture_output=True, check=False)
        found = find()
    if found is None:
        pytest.skip(f"{package} is not installed and could not be installed with apt-get")
    return found

"""The two sides of a benchmark, each run by its script in a fresh interpreter so that each peak RSS is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_side(script: str, side: str, *args: str) -> dict:
    """Run `script --side SIDE ARGS...` in a new interpreter and return the JSON object its last output line holds."""
    command = [sys.executable, str(Path(script).resolve()), "--side", side, *args]
    return json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])

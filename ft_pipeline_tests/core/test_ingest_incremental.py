"""Ingest reads only what is new: the manifest, archiving, changed files, pending days; overlapping runs and killed runs."""

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from ft_pipeline.core import manifest
from ft_pipeline.core.ingest import PROCESSED_DIR, inbox_files, ingest
from ft_pipeline.core.io import partition_file, table_glob
from ft_pipeline.core.scratch import scratch_root
from ft_pipeline.settings import Settings

from .test_ingest import LAST, lake_rows, quarantine, rec
from .test_ingest import write as write_file


def write(settings, name, lines):
    (settings.inbox_dir / name).parent.mkdir(parents=True, exist_ok=True)
    return write_file(settings, name, lines)


@pytest.fixture
def settings(tmp_path):
    s = Settings.from_env(env={}, data_dir=str(tmp_path))
    s.inbox_dir.mkdir(parents=True)
    return s


def test_ingested_files_are_recorded_archived_and_never_read_again(settings):
    write(settings, "sub/a.jsonl", [json.dumps(rec("a1")), json.dumps(rec("a2"))])
    first = ingest(settings, last_day=LAST, run_id="run-1")
    assert (first.files, first.new, first.archived) == (1, 2, 1)
    (entry,) = manifest.load(settings.state_dir).values()
    today = datetime.now(UTC).date().isoformat()
    assert (entry.source, entry.run_id, entry.archived) == ("sub/a.jsonl", "run-1", f"{PROCESSED_DIR}/{today}/sub/a.jsonl")
    assert len(entry.sha256) == 64 and (settings.inbox_dir / entry.archived).stat().st_size == entry.size
    assert inbox_files(settings.inbox_dir) == []  # the archive is not the inbox
    # the same name published again with the same bytes is skipped, and archived beside the first
    write(settings, "sub/a.jsonl", [json.dumps(rec("a1")), json.dumps(rec("a2"))])
    again = ingest(settings, last_day=LAST)
    assert (again.files, again.files_skipped, again.archived, again.new) == (0, 1, 1, 0)
    assert len(list((settings.inbox_dir / PROCESSED_DIR / today / "sub").iterdir())) == 2


def test_without_archiving_unchanged_files_are_skipped_and_changed_ones_read_again(settings):
    settings = settings.replace(archive_inbox=False)
    path = write(settings, "a.jsonl", [json.dumps(rec("a1")), json.dumps(rec("a2"))])
    assert ingest(settings, last_day=LAST).new == 2
    os.utime(path, ns=(1, 1))  # touched: a new time, the same bytes
    touched = ingest(settings, last_day=LAST)
    assert (touched.files, touched.files_skipped) == (0, 1)
    assert manifest.load(settings.state_dir)["a.jsonl"].mtime_ns == 1
    # changed after it was ingested: read again whole, and the duplicate and conflict rules apply to every line
    write(settings, "a.jsonl", [json.dumps(rec("a1")), json.dumps(rec("a2", output="changed")), json.dumps(rec("a3"))])
    changed = ingest(settings, last_day=LAST)
    assert (changed.files, changed.new, changed.duplicates, dict(changed.quarantined)) == (
        1,
        1,
        1,
        {"conflicting_duplicate": 1},
    )
    assert sorted(r["log_id"] for r in lake_rows(settings)) == ["a1", "a2", "a3"]
    assert [q["line_no"] for q in quarantine(settings)] == [2]
    assert [p.name for p in inbox_files(settings.inbox_dir)] == ["a.jsonl"]
    # archiving switched on later moves what was ingested, without reading it
    moved = ingest(settings.replace(archive_inbox=True), last_day=LAST)
    assert (moved.files, moved.archived) == (0, 1) and inbox_files(settings.inbox_dir) == []


def test_a_file_with_lines_dated_just_after_the_last_day_waits_for_that_day(settings):
    day_after = (datetime.fromisoformat(LAST) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:05Z")
    write(settings, "a.jsonl", [json.dumps(rec("a1")), json.dumps(rec("a2", timestamp=day_after))])
    write(settings, "b.jsonl", [json.dumps(rec("b1")), json.dumps(rec("b2", timestamp="2099-01-01T00:00:00Z"))])
    early = ingest(settings, last_day=LAST)
    assert early.quarantined == Counter({"out_of_range:timestamp": 2}) and early.archived == 1
    assert [p.name for p in inbox_files(settings.inbox_dir)] == ["a.jsonl"]
    later = ingest(settings, last_day=day_after[:10])
    assert (later.new, later.duplicates, later.archived) == (1, 1, 1)
    assert sorted(r["log_id"] for r in lake_rows(settings)) == ["a1", "a2", "b1"]


def test_processed_files_expire_with_the_inbox_retention(settings):
    old = (datetime.now(UTC).date() - timedelta(days=10)).isoformat()
    stale = settings.inbox_dir / PROCESSED_DIR / old / "x.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(rec("x")) + "\n")
    entries = {"x.jsonl": manifest.Entry("x.jsonl", 1, 1, "0" * 64, datetime.now(UTC), "r", f"{PROCESSED_DIR}/{old}/x.jsonl")}
    manifest.save(entries, settings.state_dir)
    write(settings, "a.jsonl", [json.dumps(rec("a1"))])
    kept = ingest(settings.replace(inbox_retention_days=30), last_day=LAST)
    assert kept.inbox_expired == [] and stale.exists()
    result = ingest(settings.replace(inbox_retention_days=7), last_day=LAST)
    assert result.inbox_expired == [old] and not stale.parent.exists()
    assert set(manifest.load(settings.state_dir)) == {"a.jsonl"}


def test_duplicate_checks_read_only_the_partitions_of_the_staged_days(settings):
    broken = partition_file(settings.lake_dir, "raw_logs", "2026-01-01")
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not parquet")  # a run that read every stored partition would fail on it
    write(settings, "a.jsonl", [json.dumps(rec("a1"))])
    assert ingest(settings, last_day=LAST).new == 1
    write(settings, "b.jsonl", [json.dumps(rec("a1")), json.dumps(rec("b1"))])
    again = ingest(settings, last_day=LAST)
    assert (again.new, again.duplicates) == (1, 1)


INGEST = """
import sys
from ft_pipeline.core.ingest import ingest
from ft_pipeline.settings import Settings
result = ingest(Settings.from_env(data_dir=sys.argv[1]), last_day=sys.argv[2])
print(result.new, result.duplicates)
"""


def _inbox(settings):
    """A few hundred lines over a few files and days, many log_ids given by more than one file."""
    for n in range(4):
        lines = [
            json.dumps(rec(f"id{(n * 60 + i) % 200}", timestamp=f"2026-01-{10 + (n * 60 + i) % 200 % 5:02d}T12:00:00Z"))
            for i in range(80)
        ]
        write(settings, f"f{n}.jsonl", [*lines, '{"log_id": "torn",'])


def _lake(settings):
    with duckdb.connect() as con:
        days = con.execute(
            f"SELECT strftime(timestamp, '%Y-%m-%d'), count(*), count(DISTINCT log_id) FROM read_parquet('{table_glob(settings.lake_dir, 'raw_logs')}') "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
    return days


@pytest.mark.parametrize("archive", ["true", "false"])
def test_four_overlapping_ingests_end_with_the_lake_of_one(tmp_path, archive):
    alone = Settings.from_env(env={}, data_dir=str(tmp_path / "alone"))
    _inbox(alone)
    ingest(alone, last_day=LAST)
    shared = Settings.from_env(env={}, data_dir=str(tmp_path / "shared"))
    _inbox(shared)
    env = {**os.environ, "FT_ARCHIVE_INBOX": archive}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INGEST, str(shared.root), LAST], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in outcomes] == [0] * 4, outcomes
    assert _lake(shared) == _lake(alone) and all(rows == ids for _, rows, ids in _lake(shared))
    assert sum(int(p.stdout.read().split()[0]) for p in procs) == 200  # every record stored by exactly one of them
    assert quarantine(shared) == quarantine(alone)
    assert list(scratch_root(shared.root).iterdir()) == [] and not list(shared.lake_dir.glob(".*"))


STUCK = """
import sys, time
from ft_pipeline.core import ingest as module
from ft_pipeline.settings import Settings
def stuck(*args):
    print("staged", flush=True)
    time.sleep(120)
module._write_partitions = stuck
module.ingest(Settings.from_env(data_dir=sys.argv[1]), last_day=sys.argv[2])
"""

LIVE = """
import sys, time
from pathlib import Path
from ft_pipeline.core.scratch import scratch_dir
with scratch_dir(Path(sys.argv[1]), "ingest") as folder:
    (folder / "rows.parquet").write_bytes(b"half written")
    print("ready", flush=True)
    time.sleep(120)
"""


def test_a_killed_ingests_scratch_is_removed_by_the_next_and_a_live_ones_is_not(settings):
    write(settings, "a.jsonl", [json.dumps(rec("a1")), json.dumps(rec("a2"))])
    killed = subprocess.Popen([sys.executable, "-c", STUCK, str(settings.root), LAST], stdout=subprocess.PIPE, text=True)
    live = None
    try:
        assert killed.stdout.readline().strip() == "staged"
        (dead_folder,) = [p for p in scratch_root(settings.root).iterdir() if p.is_dir()]
        assert list(dead_folder.rglob("*.parquet"))  # staged rows, outside the lake
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        legacy = settings.lake_dir / ".ingest-old"  # where older versions staged, inside the lake
        (legacy / "stage").mkdir(parents=True)
        live = subprocess.Popen([sys.executable, "-c", LIVE, str(settings.root)], stdout=subprocess.PIPE, text=True)
        assert live.stdout.readline().strip() == "ready"
        (live_folder,) = [p for p in scratch_root(settings.root).iterdir() if p.is_dir() and p != dead_folder]
        result = ingest(settings, last_day=LAST)
        assert (result.new, result.debris_removed) == (2, 2)
        assert not dead_folder.exists() and not legacy.exists() and live_folder.exists()
    finally:
        for proc in (killed, live):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

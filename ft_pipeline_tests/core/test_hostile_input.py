"""One contract, one answer: the hostile corpus gets the same verdict from ingest, from `judge_line` and from LogWriter."""

import json
import os

import pyarrow.parquet as pq
import pytest

from ft_pipeline.client import LogWriter
from ft_pipeline.core import ingest as ingest_module
from ft_pipeline.core.ingest import inbox_dates, inbox_entries, ingest, quarantine_name
from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.schema import judge_line
from ft_pipeline.settings import Settings
from ft_pipeline_tests.hostile import corpus_lines, write_hostile_inbox

FIRST, LAST = "2020-01-01", "2026-03-01"


@pytest.fixture
def settings(tmp_path):
    s = Settings.from_env(data_dir=str(tmp_path))
    s.inbox_dir.mkdir(parents=True)
    return s


def ingest_verdicts(settings, lines, one_file_each):
    """Ingest's reason per corpus line: all in one file (the line checker), or each alone (the parallel reader first)."""
    names = [f"line{i:03d}.jsonl" for i in range(len(lines))] if one_file_each else ["all.jsonl"]
    if one_file_each:
        for name, line in zip(names, lines):
            (settings.inbox_dir / name).write_bytes(line + b"\n")
    else:
        (settings.inbox_dir / "all.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    result = ingest(settings, last_day=LAST)
    found = {}
    for path in settings.quarantine_dir.glob("*.jsonl"):
        for entry in map(json.loads, path.read_text().splitlines()):
            found[(entry["source_file"], entry["line_no"])] = entry["reason"]
    verdicts = []
    for i in range(len(lines)):
        key = (names[i], 1) if one_file_each else ("all.jsonl", i + 1)
        verdicts.append(found.get(key))
    return verdicts, result


@pytest.mark.parametrize("one_file_each", [False, True], ids=["line_checker", "parallel_reader"])
def test_ingest_and_judge_line_agree_on_every_corpus_line(settings, one_file_each):
    corpus = corpus_lines()
    lines = [line for line, _ in corpus]
    verdicts, result = ingest_verdicts(settings, lines, one_file_each)
    expected = [None if reason == "blank" else reason for _, reason in corpus]
    judged = []
    for line in lines:
        verdict = judge_line(line + b"\n", FIRST, LAST, settings.line_limits)
        judged.append(None if verdict.blank else verdict.reason)
    mismatches = [(line[:80], e, v, j) for line, e, v, j in zip(lines, expected, verdicts, judged) if not e == v == j]
    assert not mismatches
    valid = sum(reason is None for _, reason in corpus)
    assert result.new == valid and result.quarantined_total == sum(r not in (None, "blank") for _, r in corpus)
    if not one_file_each:
        # the vertical tab, the form feed with a no-break space, the line separator; a BOM alone, before a record, doubled
        assert result.odd_blank_lines == 3 and result.bom_lines == 3


def test_log_writer_gives_the_verdict_of_ingest(settings, tmp_path):
    """Every corpus line that parses to one unambiguous record with its ids is written, or refused, as ingest judges it."""
    writer = LogWriter(tmp_path / "client_inbox")
    compared = 0
    for line, reason in corpus_lines():
        verdict = judge_line(line, FIRST, LAST, settings.line_limits)
        if verdict.blank or verdict.reason in ("invalid_utf8", "invalid_json", "duplicate_key", "not_an_object", "too_deep"):
            continue  # no record to hand to the writer, not the one the line holds, or one Python cannot parse
        try:
            record = json.loads(line.decode("utf-8").removeprefix("\ufeff"))
        except ValueError:  # a trailing comma, which ingest takes and a writer never writes
            continue
        if record.get("log_id") is None or record.get("timestamp") is None:
            continue  # the writer fills these in
        compared += 1
        if reason is None:
            writer.write(record)
        else:
            with pytest.raises(ValueError):
                writer.write(record)
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(ValueError):
        writer.write({"task": "support", "prompt": "p", "output": "o", "metadata": {"deep": deep}})
    writer.close()
    assert compared >= 25


def test_quarantine_names_never_collide():
    sources = ["nested/sub.jsonl", "nested__sub.jsonl", "nested%2Fsub.jsonl", "a%b.jsonl", "x" * 300 + "/y.jsonl"]
    names = [quarantine_name(s) for s in sources]
    assert len(set(names)) == len(names) and all("/" not in n and len(n.encode()) < 255 for n in names)


def read_quarantine(settings):
    return [json.loads(line) for p in sorted(settings.quarantine_dir.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_unreadable_files_are_quarantined_whole_and_the_rest_of_the_inbox_goes_on(settings, tmp_path_factory):
    expected = write_hostile_inbox(settings.inbox_dir, tmp_path_factory.mktemp("outside"))
    # the inbox sensor and the runner look for days in the same inbox: unreadable files hold none, and stop neither
    assert inbox_dates(inbox_entries(settings.inbox_dir), FIRST, LAST) == {"2026-01-10", "2026-01-11"}
    result = ingest(settings, last_day=LAST)
    entries = read_quarantine(settings)
    assert result.bad_files == expected.bad_files
    whole = {q["source_file"]: q for q in entries if q["line_no"] is None}
    assert {source: q["reason"] for source, q in whole.items()} == expected.bad_files
    assert all(q["raw"] == "" and q["detail"] for q in whole.values())  # a file's text is never copied
    lines = {(q["source_file"], q["line_no"]): q["reason"] for q in entries if q["line_no"] is not None}
    assert lines == expected.bad_lines
    stored = {r["log_id"] for r in lake_rows(settings)}
    assert stored == expected.valid_ids
    everything = b"".join(
        p.read_bytes() for p in settings.root.rglob("*") if p.is_file() and not p.is_relative_to(settings.inbox_dir)
    )
    assert expected.outside_marker.encode() not in everything
    assert result.quarantined_total == len(expected.bad_lines) + len(expected.bad_files)
    # the readable files were archived; the unreadable ones stay in the inbox, read again by every run
    assert result.files_kept == len(expected.bad_files) and inbox_dates(inbox_entries(settings.inbox_dir)) == set()
    assert ingest(settings, last_day=LAST).new == 0  # a rerun: the same verdicts, nothing stored twice
    assert read_quarantine(settings) == entries


def test_an_unreadable_file_is_quarantined(settings, monkeypatch):
    (settings.inbox_dir / "locked.jsonl").write_text(json.dumps({"log_id": "x"}) + "\n")
    real_open = os.open

    def refuse(path, *args, **kwargs):  # the tests run as root, who may read any file: refuse like a chmod 000 would
        if str(path).endswith("locked.jsonl"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr(ingest_module._Stager, "_stage_clean", lambda self, *a: False)
    result = ingest(settings, last_day=LAST)
    assert result.bad_files == {"locked.jsonl": "bad_file:unreadable"}


def lake_rows(settings):
    return [
        row
        for d in partition_dates(settings.lake_dir, "raw_logs")
        for row in pq.read_table(partition_file(settings.lake_dir, "raw_logs", d)).to_pylist()
    ]

"""Ingest: every line ends in the lake, the quarantine or the duplicate count; partitions by UTC day; idempotent."""

import gzip
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from ft_pipeline.core import ingest as ingest_module
from ft_pipeline.core.ingest import inbox_dates, inbox_files, ingest
from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.schema import RAW_LOG_SCHEMA, validate_record
from ft_pipeline.settings import Settings
from ft_pipeline_tests.gsm8k import gsm8k_records

LAST = "2026-03-01"


def rec(log_id, **fields):
    """A valid contract record."""
    return {"log_id": log_id, "timestamp": "2026-01-10T12:00:00Z", "task": "game", "prompt": "p", "output": "o", **fields}


BAD = {
    "missing_field:output": json.dumps({k: v for k, v in rec("b1").items() if k != "output"}),
    "bad_type:prompt": json.dumps(rec("b2", prompt=42)),
    "bad_task_name": json.dumps(rec("b3", task="../x")),
    "bad_timestamp": json.dumps(rec("b4", timestamp="yesterday")),
    "out_of_range:quality_score": json.dumps(rec("b5", quality_score=12)),
    "bad_enum:decision": json.dumps(rec("b6", decision="maybe")),
    "bad_length:log_id": json.dumps(rec("x" * 129)),
    "bad_enum:messages.role": json.dumps(rec("b7", messages=[{"role": "robot", "content": "hi"}])),
    "bad_type:failure_reasons": json.dumps(rec("b8", failure_reasons=[1])),
    "bad_type:attempt": json.dumps(rec("b9", attempt=1.5)),
    "out_of_range:timestamp": json.dumps(rec("b10", timestamp="2019-12-31T23:59:59Z")),
    "bad_type:quality_score": json.dumps(rec("b12", quality_score="5")),  # a number in a string is not a number
    "bad_type:latency_ms": json.dumps(rec("b13", latency_ms=True)),
    "out_of_range:prompt_tokens": json.dumps(rec("b14", prompt_tokens=2**63)),  # beyond int64, the lake's type
    "duplicate_key": json.dumps(rec("b15"))[:-1] + ', "prompt": "again"}',
    "invalid_json": '{"log_id": "b11",',
    "not_an_object": "[1, 2]",
}


@pytest.fixture
def settings(tmp_path):
    s = Settings.from_env(data_dir=str(tmp_path))
    s.inbox_dir.mkdir(parents=True)
    return s


def write(settings, name, lines, raw_tail=b""):
    path = settings.inbox_dir / name
    data = "".join(line + "\n" for line in lines).encode() + raw_tail
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def lake_rows(settings):
    return [
        row
        for d in partition_dates(settings.lake_dir, "raw_logs")
        for row in pq.read_table(partition_file(settings.lake_dir, "raw_logs", d)).to_pylist()
    ]


def quarantine(settings):
    return [json.loads(line) for p in sorted(settings.quarantine_dir.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_every_line_is_stored_quarantined_or_counted(settings):
    good = [rec("g1"), rec("g2", extra_field={"a": [1]}, messages=[{"role": "user", "content": "hi"}], metadata={"k": 1})]
    lines = (
        [json.dumps(r) for r in good]
        + ["", "   "]
        + list(BAD.values())
        + [
            json.dumps(good[0]),  # exact duplicate
            json.dumps(rec("g1", output="changed")),  # same log_id, other content
        ]
    )
    write(settings, "a.jsonl", lines, raw_tail=b'{"log_id": "\xff\xfe"}\n')
    result = ingest(settings, last_day=LAST)

    reasons = Counter(q["reason"] for q in quarantine(settings))
    assert reasons == Counter({**{code: 1 for code in BAD}, "conflicting_duplicate": 1, "invalid_utf8": 1})
    assert result.quarantined == reasons and result.duplicates == 1 and result.new == 2
    non_blank = len(lines) - 2 + 1
    assert result.lines == non_blank == result.new + result.duplicates + result.quarantined_total
    entry = next(q for q in quarantine(settings) if q["reason"] == "invalid_utf8")
    assert entry["source_file"] == "a.jsonl" and entry["line_no"] == len(lines) + 1 and "\ufffd" in entry["raw"]
    assert all(q["detail"] and q["raw"] for q in quarantine(settings))
    rows = {r["log_id"]: r for r in lake_rows(settings)}
    assert rows["g1"]["output"] == "o" and rows["g1"]["decision"] == "pending" and rows["g1"]["extra"] is None
    assert json.loads(rows["g2"]["extra"]) == {"extra_field": {"a": [1]}}
    assert json.loads(rows["g2"]["messages"]) == [{"role": "user", "content": "hi"}]
    assert pq.read_schema(partition_file(settings.lake_dir, "raw_logs", "2026-01-10")).names == RAW_LOG_SCHEMA.names


def test_sql_reasons_agree_with_the_python_validator(settings):
    write(settings, "a.jsonl", [line for line in BAD.values() if line.startswith("{") and "b11" not in line])
    ingest(settings, last_day=LAST)
    for q in quarantine(settings):
        # the validator sees a parsed record: neither the ingest's time window nor a key given twice
        if q["reason"] not in ("out_of_range:timestamp", "duplicate_key"):
            assert validate_record(json.loads(q["raw"]))[0] == q["reason"]


def test_the_fast_path_rejects_every_bad_record(settings):
    """Each bad record alone in a file, so that the parallel reader sees it first: it must hand it to the line checker."""
    for reason, line in BAD.items():
        write(settings, f"{reason.replace(':', '_')}.jsonl", [json.dumps(rec(f"ok-{reason}")), line])
    result = ingest(settings, last_day=LAST)
    assert {(q["source_file"], q["line_no"], q["reason"]) for q in quarantine(settings)} == {
        (f"{reason.replace(':', '_')}.jsonl", 2, reason) for reason in BAD
    }
    assert result.new == len(BAD)


def test_utc_placement_gzip_and_unicode(settings):
    lines = [
        json.dumps(rec("tz1", timestamp="2026-01-01T23:30:00-02:00")),
        json.dumps(rec("tz2", timestamp="2026-01-01T23:30:00")),
        json.dumps(rec("tz3", timestamp="2026-01-02T00:30:00+02:00", prompt="héllo 🌍 ünïcode"), ensure_ascii=False),
    ]
    write(settings, "b.jsonl.gz", lines)
    assert inbox_dates(inbox_files(settings.inbox_dir)) == {"2026-01-01", "2026-01-02"}
    ingest(settings, last_day=LAST)
    placed = {r["log_id"]: r["timestamp"].date().isoformat() for r in lake_rows(settings)}
    assert placed == {"tz1": "2026-01-02", "tz2": "2026-01-01", "tz3": "2026-01-01"}
    assert {r["log_id"]: r["prompt"] for r in lake_rows(settings)}["tz3"] == "héllo 🌍 ünïcode"
    assert {r["source_file"] for r in lake_rows(settings)} == {"b.jsonl.gz"}


def test_reruns_and_new_files_are_idempotent(settings):
    write(settings, "a.jsonl", [json.dumps(rec("a1")), json.dumps(rec("a2")), BAD["invalid_json"]])
    first = ingest(settings, last_day=LAST)
    snapshot, quarantined = lake_rows(settings), quarantine(settings)
    again = ingest(settings, last_day=LAST)
    assert (first.new, first.archived, again.files, again.new, again.duplicates) == (2, 1, 0, 0, 0)
    assert lake_rows(settings) == snapshot and quarantine(settings) == quarantined
    write(
        settings,
        "b.jsonl",
        [json.dumps(rec("a2")), json.dumps(rec("b1")), json.dumps(rec("c1", timestamp="2026-01-11T00:00:00Z"))],
    )
    third = ingest(settings, days=["2026-01-10"], last_day=LAST)
    assert (third.new, third.duplicates, third.pending, third.files_kept) == (1, 1, 1, 1)
    assert sorted(r["log_id"] for r in lake_rows(settings)) == ["a1", "a2", "b1"]
    assert third.partitions == {"2026-01-10": 3} and third.tasks == {"game": 3}
    assert len(quarantine(settings)) == 1
    # b.jsonl holds a row of a day not stored yet: it stays in the inbox for that day's ingest
    assert [p.name for p in inbox_files(settings.inbox_dir)] == ["b.jsonl"]
    fourth = ingest(settings, days=["2026-01-11"], last_day=LAST)
    assert (fourth.new, fourth.duplicates, fourth.pending, fourth.archived) == (1, 2, 0, 1)
    assert inbox_files(settings.inbox_dir) == [] and len(lake_rows(settings)) == 4


def test_bad_task_never_becomes_a_path(settings):
    write(settings, "a.jsonl", [json.dumps(rec("t1", task="../x")), json.dumps(rec("t2", task="a/b"))])
    ingest(settings, last_day=LAST)
    assert lake_rows(settings) == [] and {q["reason"] for q in quarantine(settings)} == {"bad_task_name"}
    assert sorted(p.name for p in settings.root.iterdir() if not p.name.startswith(".")) == ["inbox", "quarantine", "state"]


def test_gsm8k_real_text_is_ingested_without_loss(settings):
    records = gsm8k_records()
    write(settings, "gsm8k.jsonl.gz", [json.dumps(r, ensure_ascii=False) for r in records])
    result = ingest(settings, last_day=LAST)
    assert result.new == len(records) == 5276 and result.quarantined_total == 0
    stored = {r["log_id"]: r for r in lake_rows(settings)}
    assert len(stored) == len(records)
    for r in records[:50]:
        assert stored[r["log_id"]]["output"] == r["output"] and stored[r["log_id"]]["final_output"] == r.get("final_output")


def test_clean_files_take_the_fast_path_without_losing_checks(settings):
    write(settings, "a.jsonl", [json.dumps(rec("f1", prompt='é " \\ 🌍')), json.dumps(rec("f2", messages=None))])
    write(settings, "b.jsonl", [json.dumps(rec("f3", extra_field=1)), json.dumps(rec("f4", decision=None))])
    write(settings, "c.jsonl", [json.dumps(rec("f5")), json.dumps(rec("f5"))])
    # the same record in a file with a bad line is parsed line by line: its content hash must match the fast path's
    write(settings, "d.jsonl", [json.dumps(rec("f1", prompt='é " \\ 🌍'), ensure_ascii=False), BAD["invalid_json"]])
    result = ingest(settings, last_day=LAST)
    assert Counter(q["reason"] for q in quarantine(settings)) == {
        "bad_type:messages": 1,
        "bad_type:decision": 1,
        "invalid_json": 1,
    }
    assert (result.new, result.duplicates) == (3, 2)
    assert json.loads({r["log_id"]: r for r in lake_rows(settings)}["f3"]["extra"]) == {"extra_field": 1}


def test_only_chunks_with_bad_lines_are_parsed_line_by_line(settings, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 2000)  # about 15 lines a chunk
    by_line = []
    stage_lines = ingest_module._Stager._stage_lines
    monkeypatch.setattr(
        ingest_module._Stager, "_stage_lines", lambda self, i, chunk: by_line.append(chunk) or stage_lines(self, i, chunk)
    )
    lines = [json.dumps(rec(f"c{i}")) for i in range(100)]
    lines[40] = BAD["bad_type:prompt"]
    lines[90] = json.dumps(rec("c3", output="changed"))  # conflicts with line 4, in another chunk
    write(settings, "a.jsonl", lines)
    result = ingest(settings, last_day=LAST)
    assert {(q["line_no"], q["reason"]) for q in quarantine(settings)} == {(41, "bad_type:prompt"), (91, "conflicting_duplicate")}
    assert result.new == 98 and len(lake_rows(settings)) == 98
    # the chunk with the bad line, then the chunk of the conflicting line again for its line number
    numbers = [c["line_no"].to_pylist() for c in by_line]
    assert [(41 in n, 91 in n) for n in numbers] == [(True, False), (False, True)]
    assert result.lines_by_line == sum(len(n) for n in numbers)


def test_content_hash_is_stable(settings):
    """Stored hashes must match the ones later runs compute: a change of the hash needs a rebuilt lake."""
    write(settings, "a.jsonl", [json.dumps(rec("h1", quality_score=7.5, failure_reasons=["x"], metadata={"k": [1, "é"]}))])
    ingest(settings, last_day=LAST)
    assert [r["content_hash"] for r in lake_rows(settings)] == ["3a3f8e0ae0b7a4bb"]


def test_fast_path_screen_sends_key_oddities_to_the_line_path(settings):
    """Each file alone, so that the fast path is tried: a key given twice, a case variant and an escaped key name."""
    head = '{"log_id": "%s", "timestamp": "2026-01-10T12:00:00Z", "task": "game", "output": "o", '
    write(settings, "a.jsonl", [head % "k1" + '"prompt": "first", "prompt": "second"}'])
    write(settings, "b.jsonl", [head % "k2" + '"prompt": "p", "Decision": "accepted"}'])
    write(settings, "c.jsonl", [head % "k3" + '"prompt": "p", "decisi\\u006fn": null}'])
    result = ingest(settings, last_day=LAST)
    assert [(q["source_file"], q["reason"]) for q in quarantine(settings)] == [
        ("a.jsonl", "duplicate_key"),
        ("c.jsonl", "bad_type:decision"),
    ]
    assert "prompt" in quarantine(settings)[0]["detail"]
    rows = {r["log_id"]: r for r in lake_rows(settings)}
    assert result.new == 1
    assert rows["k2"]["decision"] == "pending" and json.loads(rows["k2"]["extra"]) == {"Decision": "accepted"}


def test_keys_outside_the_contract_keep_the_fast_path(settings, monkeypatch):
    """Fields the contract does not name go to `extra` in the parallel reader too, with the line checker's text and hash."""
    by_line = []
    monkeypatch.setattr(ingest_module._Stager, "_stage_lines", lambda self, i, chunk: by_line.append(chunk))
    records = [
        {"session_id": "s1", **rec("u1"), "meta": {"b": [1, "é"], "a": None}},
        {**rec("u2"), "meta": 2, "session_id": "s2"},
        rec("u3"),
    ]
    write(settings, "a.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
    result = ingest(settings, last_day=LAST)
    assert not by_line and result.new == 3
    rows = {r["log_id"]: r for r in lake_rows(settings)}
    assert rows["u1"]["extra"] == '{"meta":{"b":[1,"é"],"a":null},"session_id":"s1"}'
    assert json.loads(rows["u2"]["extra"]) == {"meta": 2, "session_id": "s2"} and rows["u3"]["extra"] is None

    monkeypatch.undo()
    # the same records among a bad line, so parsed line by line: exact duplicates, not conflicts
    write(settings, "b.jsonl", [json.dumps(r) for r in records] + [BAD["invalid_json"]])
    again = ingest(settings, last_day=LAST)
    assert (again.new, again.duplicates, dict(again.quarantined)) == (0, 3, {"invalid_json": 1})


def test_a_null_outside_the_contract_is_kept(settings):
    """The reader reads a null as absent: a file where a record sets an unknown key to null is parsed line by line."""
    write(settings, "a.jsonl", [json.dumps(rec("n1", note=None)), json.dumps(rec("n2", note="x")), json.dumps(rec("n3"))])
    assert ingest(settings, last_day=LAST).new == 3
    rows = {r["log_id"]: r for r in lake_rows(settings)}
    assert [rows[i]["extra"] for i in ("n1", "n2", "n3")] == ['{"note":null}', '{"note":"x"}', None]


def test_a_file_with_too_many_keys_outside_the_contract_is_parsed_line_by_line(settings, monkeypatch):
    monkeypatch.setattr(ingest_module, "MAX_UNKNOWN_KEYS", 1)
    by_line = []
    stage_lines = ingest_module._Stager._stage_lines
    monkeypatch.setattr(
        ingest_module._Stager, "_stage_lines", lambda self, i, chunk: by_line.append(chunk) or stage_lines(self, i, chunk)
    )
    write(settings, "a.jsonl", [json.dumps(rec("m1", a=1)), json.dumps(rec("m2", b=2))])
    assert ingest(settings, last_day=LAST).new == 2 and by_line
    assert sorted(r["extra"] for r in lake_rows(settings)) == ['{"a":1}', '{"b":2}']

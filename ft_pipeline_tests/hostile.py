"""A hostile inbox: poison lines and files among valid records that carry planted PII, with the verdict each must get."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

DAY = "2026-01-10"


def record(log_id: str, **fields) -> dict:
    """A valid record of task `support`, accepted and of good quality, so that it settles and reaches a dataset."""
    base = {
        "log_id": log_id,
        "timestamp": f"{DAY}T12:00:00Z",
        "task": "support",
        "prompt": f"How do I reset my password, case {log_id}?",
        "output": f"Open settings, choose security, then reset; case {log_id} is noted.",
        "decision": "accepted",
        "quality_score": 9,
    }
    return {**base, **fields}


# Planted PII: each value must be gone from every stage after raw (settlements, datasets, report, MLflow, Dagster, logs).
PII = {
    "topic_email": "carol.topic@example.com",
    "agent_phone": "+1-202-555-0143",
    "experiment_key": "sk-live-abcdefghijklmnop1234567890",
    "variant_aws": "AKIAIOSFODNN7EXAMPLE",
    "failure_ssn": "078-05-1120",
    "spelled_email": "dave(at)example.org",
    "bracket_email": "erin [at] example [dot] org",
    "accented_email": "jose@exämple.de",
    "local_phone": "555-0199",
    "dotted_card": "4111.1111.1111.1111",
    "short_key": "sk-abc12345",
    "dashed_aws": "v-AKIAI44QH8DHBEXAMPLE",
    "metadata_email": "frank.meta@example.net",
    "extra_card": "5500 0055 5555 5559",
    "user_email": "grace.user@example.com",
    "model_key": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
}
# the parts of a planted value that identify it (what a leak check searches for)
PII_NEEDLES = {
    "dashed_aws": "AKIAI44QH8DHBEXAMPLE",
    "bracket_email": "erin [at] example",
    "spelled_email": "dave(at)example",
}

VALID = [
    record("ok-plain"),
    record("ok-topic", topic=f"billing for {PII['topic_email']}"),
    record("ok-agent", agent=f"desk {PII['agent_phone']}"),
    record("ok-experiment", experiment_id=f"exp-{PII['experiment_key']}", variant=PII["variant_aws"]),
    record("ok-failures", failure_reasons=["too_formal", f"leaked {PII['failure_ssn']}"]),
    record("ok-spelled", prompt=f"Mail {PII['spelled_email']} or {PII['bracket_email']} about my invoice"),
    record("ok-accented", prompt=f"Write to {PII['accented_email']} please", output=f"Call {PII['local_phone']} today."),
    record("ok-card", prompt=f"My card {PII['dotted_card']} was charged twice"),
    record("ok-keys", prompt=f"Is {PII['short_key']} or {PII['dashed_aws']} my key?"),
    record("ok-metadata", metadata={"contact": PII["metadata_email"], "nested": {"list": [PII["extra_card"]]}}),
    record("ok-extra", loyalty_card=PII["extra_card"], user_id=PII["user_email"], model=f"m {PII['model_key']}"),
    record("ok-unicode", prompt="Grüße aus Köln 🌍, wie geht's?", output="Danke, gut! ünïcödé"),
    record("ok-deep-metadata", metadata={"a": {"b": {"c": {"d": [1, [2, [3]]]}}}}),
    record("ok-naive-time", timestamp=f"{DAY} 08:30:00"),
    record("ok-offset", timestamp=f"{DAY}T23:30:00-00:30"),
    record("ok-odd-keys", **{"*": 1, "a.b": {"c": 2}, "$": None, 'q"': [1], "\u0000": "nul"}),
]


def _line(value: dict) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


# valid lines as a producer may write them: a comma after a last member, which DuckDB's reader takes and so ingest does
VALID_LINES = [_line(r) for r in VALID] + [
    _line(record("ok-trailing-comma", metadata={"list": [1, 2]})).replace(b"2]", b"2, ]")[:-1] + b",\t}"
]
VALID_IDS = {r["log_id"] for r in VALID} | {"ok-trailing-comma"}


def _deep(levels: int, opener: str = "[") -> str:
    """JSON text of arrays (or objects) nested `levels` deep."""
    return '{"k":' * levels + "1" + "}" * levels if opener == "{" else "[" * levels + "]" * levels


# (line bytes without newline, the reason ingest must give it)
BAD: list[tuple[bytes, str]] = [
    (_line(record("bad-early", timestamp="2019-06-01T00:00:00Z")), "out_of_range:timestamp"),
    (_line(record("bad-9999", timestamp="9999-12-31T23:59:59-05:00")), "out_of_range:timestamp"),
    (_line(record("bad-0001", timestamp="0001-01-01T00:00:00Z")), "out_of_range:timestamp"),
    (_line(record("bad-0001-offset", timestamp="0001-01-01T00:30:00+01:00")), "out_of_range:timestamp"),
    (_line(record("bad-future", timestamp="2099-01-01T00:00:00Z")), "out_of_range:timestamp"),
    (_line(record("bad-offset", timestamp=f"{DAY}T12:00:00+25:00")), "bad_timestamp"),
    (_line(record("bad-minutes", timestamp=f"{DAY}T12:00:00+05:99")), "bad_timestamp"),
    (_line(record("bad-hour", timestamp=f"{DAY}T24:00:00Z")), "bad_timestamp"),
    (_line(record("bad-second", timestamp=f"{DAY}T12:00:60Z")), "bad_timestamp"),
    (_line(record("bad-feb", timestamp="2026-02-30T12:00:00Z")), "bad_timestamp"),
    (_line(record("bad-nl-time", timestamp=f"{DAY}T12:00:00Z\n")), "bad_timestamp"),
    (_line(record("bad-task-nl", task="support\n")), "bad_task_name"),
    (_line(record("bad-task-path", task="../etc")), "bad_task_name"),
    (_line({**record("bad-empty-key"), "": "x"}), "empty_key"),
    (_line(record("bad-deep-array", metadata={"x": json.loads("[]")})).replace(b"[]", _deep(10_000).encode()), "too_deep"),
    (_line(record("bad-deep-object", metadata={})).replace(b"{}", _deep(10_000, "{").encode()), "too_deep"),
    (_line(record("bad-deep-5000", metadata={})).replace(b"{}", _deep(5_000, "{").encode()), "too_deep"),
    (_line({**record("bad-keys"), **{f"k{i}": i for i in range(300)}}), "too_many_keys"),
    (_line(record("bad-large", prompt="x" * (9 << 20))), "too_large"),
    (b'{"log_id": "bad-double-comma", ' + _line(record("x"))[1:-1].split(b", ", 1)[1] + b",, }", "invalid_json"),
    (b'{"log_id": "bad-empty-comma", "timestamp": "2026-01-10T12:00:00Z", "metadata": [,]}', "invalid_json"),
    (_line(record("bad-nan"))[:-1] + b', "confidence": NaN}', "bad_type:confidence"),
    (_line(record("bad-huge-number"))[:-1] + b', "latency_ms": 1e400}', "bad_type:latency_ms"),
    (_line(record("bad-surrogate"))[:-1] + b', "agent": "\\ud800"}', "invalid_json"),
    (_line(record("bad-dup"))[:-1] + b', "prompt": "again"}', "duplicate_key"),
    (b'{"log_id": "bad-torn", "timestamp": "2026-01', "invalid_json"),
    (b"\xff\xfe not utf-8 at all", "invalid_utf8"),
    (b"\xef\xbb\xbf\xef\xbb\xbf" + _line(record("bad-double-bom")), "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"\x0b" + _line(record("bad-vt-prefix")), "invalid_json"),
    (_line(record("bad-quality", quality_score=11)), "out_of_range:quality_score"),
    (_line(record("bad-prompt-type", prompt=["not", "text"])), "bad_type:prompt"),
    (_line({k: v for k, v in record("bad-missing").items() if k != "output"}), "missing_field:output"),
]
# lines that are not records: neither stored nor quarantined (white space of any kind, a byte order mark alone)
BLANK: list[bytes] = [b"", b"   \t", b"\x0b", b"\x0c \xc2\xa0", b"\xe2\x80\xa8", b"\xef\xbb\xbf"]
# valid records behind a byte order mark (a file saved by an editor that writes one): stored, the mark dropped
BOM_VALID = [record("ok-bom")]


@dataclass
class HostileInbox:
    """What was written into an inbox, and where each part must end up."""

    valid_ids: set[str] = field(default_factory=set)
    bad_lines: dict[tuple[str, int], str] = field(default_factory=dict)  # (source file, line_no) -> reason
    bad_files: dict[str, str] = field(default_factory=dict)  # source file -> bad_file:<why>
    outside_marker: str = "outside-the-inbox-7f3a"


def write_hostile_inbox(inbox: Path, outside: Path) -> HostileInbox:
    """Fill `inbox` with the hostile corpus (and `outside` with a file a symlink points to) and say what must happen."""
    inbox.mkdir(parents=True, exist_ok=True)
    expected = HostileInbox()
    lines: list[bytes] = []
    mixed: list[tuple[bytes, str | None]] = []
    for i, valid in enumerate(VALID_LINES):
        mixed.append((valid, None))
        if i < len(BAD):
            mixed.append(BAD[i])
    mixed += BAD[len(VALID_LINES) :]
    mixed += [(blank, "blank") for blank in BLANK]
    for line_no, (line, reason) in enumerate(mixed, 1):
        lines.append(line)
        if reason is None:
            continue
        if reason != "blank":
            expected.bad_lines[("mixed.jsonl", line_no)] = reason
    (inbox / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected.valid_ids |= VALID_IDS

    # a BOM at the start of a gzip file of valid records
    (inbox / "bom.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"\n".join(_line(r) for r in BOM_VALID) + b"\n"))
    expected.valid_ids |= {r["log_id"] for r in BOM_VALID}

    # two sources whose quarantine names collided: one bad line each, both kept
    (inbox / "nested").mkdir()
    (inbox / "nested" / "sub.jsonl").write_bytes(_line(record("ok-nested")) + b"\n" + BAD[0][0] + b"\n")
    (inbox / "nested__sub.jsonl").write_bytes(BAD[1][0] + b"\n" + _line(record("ok-flat")) + b"\n")
    expected.valid_ids |= {"ok-nested", "ok-flat"}
    expected.bad_lines[("nested/sub.jsonl", 2)] = BAD[0][1]
    expected.bad_lines[("nested__sub.jsonl", 1)] = BAD[1][1]

    # files that cannot be read: each quarantined whole, the rest of the inbox goes on
    (inbox / "plain.jsonl.gz").write_bytes(_line(record("lost-plain")) + b"\n")
    good_gzip = gzip.compress(b"\n".join(_line(record(f"lost-truncated-{i}")) for i in range(50)) + b"\n")
    (inbox / "truncated.jsonl.gz").write_bytes(good_gzip[: len(good_gzip) // 2])
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.jsonl"
    secret.write_bytes(_line(record(expected.outside_marker, prompt=f"private {expected.outside_marker}")) + b"\n")
    os.symlink(secret, inbox / "link.jsonl")
    os.mkfifo(inbox / "pipe.jsonl")
    (Path(os.fsdecode(os.fsencode(inbox) + b"/latin1-\xe9.jsonl"))).write_bytes(_line(record("lost-bad-name")) + b"\n")
    (inbox / "folder.jsonl").mkdir()
    expected.bad_files.update(
        {
            "plain.jsonl.gz": "bad_file:not_gzip",
            "truncated.jsonl.gz": "bad_file:corrupt_gzip",
            "link.jsonl": "bad_file:symlink",
            "pipe.jsonl": "bad_file:not_a_regular_file",
            "folder.jsonl": "bad_file:not_a_regular_file",
            "latin1-\\xe9.jsonl": "bad_file:bad_name",
        }
    )
    return expected


def corpus_lines() -> list[tuple[bytes, str | None]]:
    """Every corpus line with the reason ingest must give it (None: valid; 'blank': not a record)."""
    return (
        [(line, None) for line in VALID_LINES]
        + BAD
        + [(blank, "blank") for blank in BLANK]
        + [(b"\xef\xbb\xbf" + _line(r), None) for r in BOM_VALID]
    )

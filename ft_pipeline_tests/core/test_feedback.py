"""Feedback records: their contract, how ingest stores and quarantines them, and settlements that read each call through its
latest feedback, whatever file, day or order it came in."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ft_pipeline.core.aggregates import day_aggregates
from ft_pipeline.core.feedback import FEEDBACK_SCHEMA, feedback_problem, stale_days
from ft_pipeline.core.ingest import inbox_dates, ingest
from ft_pipeline.core.io import partition_file, read_jsonl
from ft_pipeline.core.retrain import RetrainState, scan_settlements
from ft_pipeline.core.schema import CALL_CONTRACT, FEEDBACK_CONTRACT, KIND_FIELD, contract, field_rules, judge_line
from ft_pipeline.core.settlements import build_partition, settlements_path
from ft_pipeline.settings import Settings
from ft_pipeline_tests.retrain_fixtures import write_adapter

LAST = "2026-03-01"

GOOD = {
    "kind": "feedback",
    "log_id": "c1",
    "feedback_at": "2026-01-02T10:00:00+02:00",
    "decision": "edited",
    "final_output": "ok",
}


def test_feedback_keys_and_times_follow_the_call_contract():
    calls, feedback = contract(CALL_CONTRACT)["properties"], contract(FEEDBACK_CONTRACT)["properties"]
    same = {k: v for k, v in calls["log_id"].items() if k != "description"}
    assert {k: v for k, v in feedback["log_id"].items() if k != "description"} == same
    assert {k: v for k, v in feedback["feedback_at"].items() if k != "description"} == {
        k: v for k, v in calls["timestamp"].items() if k != "description"
    }
    for name in ("quality_score", "user_rating"):
        assert (feedback[name]["minimum"], feedback[name]["maximum"]) == (calls[name]["minimum"], calls[name]["maximum"])
    kinds = {"string": pa.string(), "number": pa.float64(), "json": pa.string(), "timestamp": pa.timestamp("us", tz="UTC")}
    for rule in field_rules(FEEDBACK_CONTRACT):
        if rule.name != KIND_FIELD:
            assert FEEDBACK_SCHEMA.field(rule.name).type == kinds[rule.kind], rule.name


def test_feedback_problem_names_the_first_broken_rule():
    assert feedback_problem(GOOD) is None
    assert feedback_problem({**GOOD, "decision": None, "final_output": None, "user_rating": 4}) is None
    assert feedback_problem({**GOOD, "unknown_key": [1]}) is None  # kept under extra, like a call's
    cases = {
        "missing_field:log_id": {k: v for k, v in GOOD.items() if k != "log_id"},
        "missing_field:feedback_at": {k: v for k, v in GOOD.items() if k != "feedback_at"},
        "bad_length:log_id": {**GOOD, "log_id": ""},
        "bad_timestamp": {**GOOD, "feedback_at": "2026-01-02T24:00:00Z"},
        "bad_enum:decision": {**GOOD, "decision": "maybe"},
        "bad_type:final_output": {**GOOD, "final_output": 3},
        "out_of_range:user_rating": {**GOOD, "user_rating": 6},
        "out_of_range:quality_score": {**GOOD, "quality_score": -1},
        "bad_type:metadata": {**GOOD, "metadata": "x"},
        "empty_feedback": {"kind": "feedback", "log_id": "c1", "feedback_at": "2026-01-02T10:00:00Z", "reviewer": "ann"},
        "out_of_range:feedback_at": {**GOOD, "feedback_at": "9999-12-31T23:00:00-05:00"},
        "not_an_object": [GOOD],
    }
    for code, record in cases.items():
        problem = feedback_problem(record)
        assert problem is not None and problem[0] == code, (code, problem)
        assert problem[1]


def test_a_line_is_judged_by_the_contract_of_its_kind():
    line = b'{"kind": "feedback", "log_id": "c1", "feedback_at": "2026-01-02T10:00:00Z", "user_rating": 5}\n'
    assert judge_line(line, "2026-01-01", "2026-01-31").reason is None
    assert judge_line(line.replace(b"5}", b"9}"), "2026-01-01", "2026-01-31").reason == "out_of_range:user_rating"
    other = b'{"kind": "note", "log_id": "c1", "timestamp": "2026-01-02T10:00:00Z", "task": "t", "prompt": "p", "output": "o"}'
    assert judge_line(other, "2026-01-01", "2026-01-31").reason == "bad_enum:kind"
    call = other.replace(b'"note"', b'"call"')
    assert judge_line(call, "2026-01-01", "2026-01-31").reason is None


def record(log_id, day, **fields):
    """A valid call record of `day` at noon."""
    return {"log_id": log_id, "timestamp": f"{day}T12:00:00Z", "task": "game", "prompt": f"Tell me about {log_id}",
            "output": f"Here is {log_id}, in a few plain words.", **fields}  # fmt: skip


def feedback(log_id, at, **fields):
    """A feedback record given on `at` (an ISO time)."""
    return {"kind": "feedback", "log_id": log_id, "feedback_at": at, **fields}


@pytest.fixture
def settings(tmp_path):
    return fresh(tmp_path / "data")


def fresh(data_dir):
    s = Settings.from_env(data_dir=str(data_dir), partitions_start="2026-01-01")
    s.inbox_dir.mkdir(parents=True)
    return s


def deliver(settings, name, records):
    """Drop one inbox file and ingest it (records may be dicts or raw lines), as a separate run."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (settings.inbox_dir / name).write_text("".join(line + "\n" for line in lines))
    return ingest(settings, last_day=LAST, run_id=name)


SETTLED_COLUMNS = ["decision", "final_output", "final_text", "user_rating", "quality_score", "retained", "edit_distance",
                   "deleted_spans", "added_spans", "weight", "task", "prompt", "output"]  # fmt: skip


def settled(settings, days):
    """Settle `days` and return the settled rows by log_id (the columns that the feedback decides)."""
    rows = {}
    for day in days:
        build_partition(settings, day)
        for row in pq.read_table(settlements_path(settings, day)).to_pylist():
            rows[row["log_id"]] = {name: row[name] for name in SETTLED_COLUMNS}
    return rows


DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]


def test_feedback_in_other_files_days_and_orders_settles_like_one_record(tmp_path, settings):
    # feedback first, for calls not ingested yet: kept, and counted as waiting
    first = deliver(
        settings,
        "f1.jsonl",
        [
            feedback("c1", "2026-01-13T08:00:00Z", decision="edited", final_output="c1, corrected by hand."),
            feedback("c2", "2026-01-15T08:00:00+01:00", decision="edited", final_output="c2, as the editor wrote it."),
            feedback("c4", "2026-01-14T09:00:00Z", decision="edited", final_output="c4, rewritten."),
        ],
    )
    assert (first.feedback_new, first.feedback_waiting, first.stale_days) == (3, 3, [])
    second = deliver(
        settings,
        "f2.jsonl",
        [
            record("c1", DAYS[0]),
            record("c2", DAYS[1], decision="accepted", user_rating=2),
            record("c3", DAYS[1]),
            feedback("c2", "2026-01-13T08:00:00Z", decision="rejected"),
        ],
    )
    assert (second.new, second.feedback_new, second.feedback_waiting) == (3, 1, 1)
    third = deliver(
        settings,
        "f3.jsonl",
        [
            feedback("c2", "2026-01-14T08:00:00Z", decision="accepted", comment="fine after all"),
            feedback("c2", "2026-01-12T08:00:00Z", user_rating=5),  # the only rating: it wins, however old
            record("c4", DAYS[2]),
        ],
    )
    assert (third.feedback_new, third.feedback_waiting, third.stale_days) == (2, 0, ["2026-01-11"])

    single = fresh(tmp_path / "single")
    deliver(
        single,
        "all.jsonl",
        [
            record("c1", DAYS[0], decision="edited", final_output="c1, corrected by hand."),
            record("c2", DAYS[1], decision="edited", final_output="c2, as the editor wrote it.", user_rating=5),
            record("c3", DAYS[1]),
            record("c4", DAYS[2], decision="edited", final_output="c4, rewritten."),
        ],
    )
    split = settled(settings, DAYS)
    assert split == settled(single, DAYS)
    assert sorted(split) == ["c1", "c2", "c4"] and split["c2"]["final_text"] == "c2, as the editor wrote it."


def test_a_tie_on_feedback_at_is_broken_by_content_whatever_the_order(tmp_path):
    at = "2026-01-13T08:00:00Z"
    tied = [feedback("c1", at, decision="edited", final_output=text) for text in ("Version A.", "Version B.")]
    results = []
    for name, order in (("ab", tied), ("ba", tied[::-1])):
        s = fresh(tmp_path / name)
        deliver(s, "call.jsonl", [record("c1", DAYS[0])])
        for i, line in enumerate(order):
            deliver(s, f"fb{i}.jsonl", [line])
        results.append(settled(s, DAYS[:1]))
    assert results[0] == results[1] and results[0]["c1"]["final_text"] in ("Version A.", "Version B.")


def test_bad_feedback_lines_are_quarantined_with_reasons_and_records_stored_once(settings):
    at = "2026-01-13T08:00:00Z"
    bad = {
        "missing_field:log_id": {"kind": "feedback", "feedback_at": at, "decision": "accepted"},
        "bad_timestamp": feedback("c1", "soon", decision="accepted"),
        "bad_enum:decision": feedback("c1", at, decision="maybe"),
        "out_of_range:user_rating": feedback("c1", at, user_rating=9),
        "bad_type:comment": feedback("c1", at, comment=["x"]),
        "empty_feedback": feedback("c1", at, reviewer="ann"),
        "bad_enum:kind": {**record("c9", DAYS[0]), "kind": "note"},
        "duplicate_key": json.dumps(feedback("c1", at, decision="accepted"))[:-1] + ', "decision": "rejected"}',
    }
    good = feedback("c1", at, decision="edited", final_output="c1, fixed.", reviewer="ann", source="ui")
    later = feedback("c1", "2026-01-14T08:00:00Z", user_rating=4)
    result = deliver(
        settings, "mixed.jsonl", [record("c1", DAYS[0]), good, *bad.values(), good, later, dict(reversed(good.items()))]
    )
    assert result.quarantined == Counter(list(bad)) and result.new == 1
    # a line of another kind, or with a repeated key, is no feedback record: it counts only by its reason
    assert (result.feedback_new, result.feedback_duplicates, result.feedback_quarantined) == (2, 2, len(bad) - 2)
    quarantined = read_jsonl(settings.quarantine_dir / "mixed.jsonl.jsonl")
    assert [q["reason"] for q in quarantined] == list(bad)
    for q in quarantined:  # ingest's reason is the one the line checker gives, with its detail
        verdict = judge_line(q["raw"].encode(), "2026-01-01", LAST)
        assert (verdict.reason, verdict.detail) == (q["reason"], q["detail"])
    stored = pq.read_table(partition_file(settings.lake_dir, "feedback", "2026-01-13")).to_pylist()
    assert len(stored) == 1 and json.loads(stored[0]["extra"]) == {"source": "ui"} and stored[0]["reviewer"] == "ann"
    assert deliver(settings, "again.jsonl", [good, later]).feedback_duplicates == 2  # sent again: still stored once


def test_late_feedback_marks_the_older_day_stale_and_its_resettle_clears_it(settings):
    deliver(settings, "calls.jsonl", [record("c1", DAYS[0]), record("c2", DAYS[0], decision="accepted")])
    assert settled(settings, DAYS[:1]).keys() == {"c2"}
    result = deliver(settings, "late.jsonl", [feedback("c1", "2026-02-01T10:00:00Z", decision="accepted")])
    assert result.stale_days == [DAYS[0]] and stale_days(settings) == {DAYS[0]: "late.jsonl"}
    assert settled(settings, DAYS[:1]).keys() == {"c1", "c2"} and stale_days(settings) == {}
    totals = day_aggregates(settings.lake_dir, DAYS[0]).filter(pc.equal(pc.field("section"), "totals")).to_pylist()
    assert (totals[0]["accepted"], totals[0]["pending"]) == (2, 0)


def test_a_call_settled_by_late_feedback_is_a_new_example_once(settings):
    deliver(settings, "calls.jsonl", [record("c1", DAYS[0], decision="pending"), record("c2", DAYS[0], decision="accepted")])
    settled(settings, DAYS[:1])
    state = RetrainState()
    assert scan_settlements(state, settings.lake_dir, settings.adapters_dir).counts["game"].count == 1

    def train():  # an adapter trained on every settled example: its watermark is their newest ingested_at
        times = pq.read_table(settlements_path(settings, DAYS[0]))["ingested_at"]
        write_adapter(
            settings.adapters_dir, "game", len(list(settings.adapters_dir.glob("game/*"))) + 1, pc.max(times).as_py().isoformat()
        )

    train()
    assert scan_settlements(state, settings.lake_dir, settings.adapters_dir).counts["game"].count == 0
    deliver(settings, "late.jsonl", [feedback("c1", "2026-02-01T10:00:00Z", decision="edited", final_output="c1, fixed.")])
    settled(settings, DAYS[:1])
    assert scan_settlements(state, settings.lake_dir, settings.adapters_dir).counts["game"].count == 1
    train()
    deliver(settings, "again.jsonl", [feedback("c1", "2026-02-01T10:00:00Z", decision="edited", final_output="c1, fixed.")])
    settled(settings, DAYS[:1])  # the same feedback again, and a rebuild: nothing new
    assert scan_settlements(state, settings.lake_dir, settings.adapters_dir).counts["game"].count == 0


def test_a_file_of_feedback_alone_takes_the_parallel_reader_and_stores_what_the_line_checker_stores(settings):
    records = [
        feedback(f"c{i}", f"2026-01-1{i % 3}T08:00:00Z", decision="edited", final_output=f"v{i}", metadata={"n": i}, tag="x")
        for i in range(6)
    ] + [feedback("c0", "2026-01-10T08:00:00Z", user_rating=3, comment=None)]
    fast = deliver(settings, "feedback.jsonl", records)
    assert (fast.lines_by_line, fast.feedback_new, fast.quarantined_total) == (0, 7, 0)
    # the same records beside a call are checked line by line: the same content hashes, so all are duplicates
    mixed = deliver(settings, "mixed.jsonl", [record("c0", DAYS[0]), *records])
    assert (mixed.lines_by_line, mixed.feedback_new, mixed.feedback_duplicates) == (8, 0, 7)
    assert deliver(settings, "bad.jsonl", [*records[:2], feedback("c1", "2026-01-10T08:00:00Z")]).quarantined == Counter(
        ["empty_feedback"]
    )


def test_a_call_may_say_its_kind_and_a_feedback_file_names_its_days(settings):
    assert deliver(settings, "plain.jsonl", [record("c1", DAYS[0])]).new == 1
    same = deliver(settings, "kind.jsonl", [{"kind": "call", **record("c1", DAYS[0])}])
    assert (same.duplicates, same.quarantined_total) == (1, 0)  # the same record, not a conflicting one
    path = settings.inbox_dir / "late.jsonl"
    path.write_text(json.dumps(feedback("c1", "2026-01-20T23:30:00-01:00", decision="accepted")) + "\n")
    assert inbox_dates([path]) == {"2026-01-21"}  # the sensor starts an ingest for the feedback's day


AT = "2026-01-13T08:00:00Z"
CORPUS = [
    (json.dumps(feedback("c1", AT, decision="accepted")), None),
    (json.dumps(feedback("c2", AT, decision=None, final_output="only the text")), None),
    (json.dumps(feedback("c3", "2026-01-13 08:00", user_rating=1, quality_score=10.0, metadata={"a": [1, {"b": None}]})), None),
    (json.dumps(feedback("c4", AT, comment="", reviewer=None, timestamp="2026-01-10T00:00:00Z")), None),  # timestamp: extra
    ('{"kind": "\\u0066eedback", "log_id": "c5", "feedback_at": "' + AT + '", "decision": "rejected"}', None),
    (json.dumps(feedback("c6", AT, decision=None, user_rating=None)), "empty_feedback"),
    (json.dumps(feedback("c7", AT, quality_score="9")), "bad_type:quality_score"),
    (json.dumps(feedback("c8", AT, user_rating=float("nan"))).replace("NaN", "1e999"), "bad_type:user_rating"),
    (json.dumps(feedback("x" * 129, AT, decision="accepted")), "bad_length:log_id"),
    (json.dumps(feedback(7, AT, decision="accepted")), "bad_type:log_id"),
    (json.dumps(feedback("c9", None, decision="accepted")), "bad_type:feedback_at"),
    (json.dumps(feedback("c9", "2026-01-13T08:00:00+25:00", decision="accepted")), "bad_timestamp"),
    (json.dumps(feedback("c9", "0001-01-01T00:00:00+01:00", decision="accepted")), "out_of_range:feedback_at"),
    (json.dumps(feedback("c9", AT, decision="accepted", metadata=[1])), "bad_type:metadata"),
    (json.dumps({**feedback("c9", AT, decision="accepted"), "": 1}), "empty_key"),
    (json.dumps({"kind": "feedback"}), "missing_field:log_id"),
    (json.dumps({"kind": ["feedback"], "log_id": "c9"}), "bad_enum:kind"),  # no feedback: judged as a call
]


@pytest.mark.parametrize("one_file_each", [False, True], ids=["line_checker", "parallel_reader"])
def test_ingest_and_judge_line_agree_on_feedback_lines(tmp_path, one_file_each):
    s = fresh(tmp_path / "data")
    names = [f"l{i:02d}.jsonl" for i in range(len(CORPUS))] if one_file_each else ["all.jsonl"] * len(CORPUS)
    for name, (line, _) in zip(names, CORPUS):
        with open(s.inbox_dir / name, "a") as fh:
            fh.write(line + "\n")
    result = ingest(s, last_day=LAST)
    found = {}
    for name in set(names):
        for entry in read_jsonl(s.quarantine_dir / f"{name}.jsonl"):
            found[(name, entry["line_no"])] = entry["reason"]
    got = [found.get((name, 1 if one_file_each else i + 1)) for i, name in enumerate(names)]
    judged = [judge_line(line.encode(), "2026-01-01", LAST).reason for line, _ in CORPUS]
    assert got == judged == [reason for _, reason in CORPUS]
    valid = sum(reason is None for _, reason in CORPUS)
    assert result.feedback_new == valid
    # alone, a valid feedback file takes the parallel reader (but c4's, whose timestamp looks like a call's)
    assert result.lines_by_line == (len(CORPUS) - valid + 1 if one_file_each else len(CORPUS))


def test_the_days_a_run_stores_are_not_marked_stale_by_it(settings):
    deliver(settings, "calls.jsonl", [record("c1", DAYS[0]), record("c2", DAYS[1])])
    (settings.inbox_dir / "both.jsonl").write_text(
        "".join(json.dumps(feedback(i, "2026-02-01T10:00:00Z", decision="accepted")) + "\n" for i in ("c1", "c2"))
    )
    result = ingest(settings, days=[DAYS[1]], last_day=LAST, run_id="run-of-day-2")
    assert result.stale_days == [DAYS[0]] and stale_days(settings) == {DAYS[0]: "run-of-day-2"}


def test_an_ingest_without_new_feedback_never_reads_the_stored_calls(settings):
    deliver(settings, "calls.jsonl", [record("c1", DAYS[0])])
    waiting = deliver(settings, "early.jsonl", [feedback("c9", "2026-01-13T08:00:00Z", decision="rejected")])
    assert waiting.feedback_waiting == 1
    # a stored day the next runs must not need: they touch only their own day, and the waiting set
    partition_file(settings.lake_dir, "raw_logs", DAYS[0]).write_bytes(b"not parquet")
    later = deliver(settings, "later.jsonl", [record("c5", DAYS[2])])
    assert (later.new, later.feedback_waiting) == (1, 1)
    arrived = deliver(settings, "arrived.jsonl", [record("c9", DAYS[2])])
    assert (arrived.new, arrived.feedback_waiting) == (1, 0)

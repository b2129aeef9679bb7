"""The feedback contract and its validator: the call contract's rules and reason codes, applied to feedback records."""

import pyarrow as pa

from ft_pipeline.core.feedback import FEEDBACK_SCHEMA, feedback_problem
from ft_pipeline.core.schema import CALL_CONTRACT, FEEDBACK_CONTRACT, KIND_FIELD, contract, field_rules, judge_line

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

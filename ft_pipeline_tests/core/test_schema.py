"""The contract loads from the package, and the lake schema covers every contract field."""

import pyarrow as pa

from ft_pipeline.core.schema import KIND_FIELD, RAW_LOG_SCHEMA, contract, field_rules, record_problems, validate_record

GOOD = {"log_id": "x1", "timestamp": "2026-01-01T00:00:00Z", "task": "game", "prompt": "p", "output": "o"}


def test_every_contract_field_has_a_lake_column_of_its_kind():
    kinds = {
        "string": pa.string(),
        "number": pa.float64(),
        "integer": pa.int64(),
        "json": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "string_list": pa.list_(pa.string()),
    }
    assert [r.name for r in field_rules()] == list(contract()["properties"])
    for rule in field_rules():
        if rule.name != KIND_FIELD:  # every raw_logs row is a call: the kind routes a line, it is not stored
            assert RAW_LOG_SCHEMA.field(rule.name).type == kinds[rule.kind], rule.name
    assert {"extra", "content_hash", "source_file", "ingested_at"} <= set(RAW_LOG_SCHEMA.names)


def test_validate_record_names_the_first_broken_rule():
    assert validate_record(GOOD) == []
    assert validate_record({**GOOD, "quality_score": 5.0, "attempt": 2.0, "user_rating": None}) == []
    cases = {
        "missing_field:output": {k: v for k, v in GOOD.items() if k != "output"},
        "bad_type:prompt": {**GOOD, "prompt": None},
        "bad_type:attempt": {**GOOD, "attempt": 1.5},
        "bad_type:confidence": {**GOOD, "confidence": True},
        "bad_length:log_id": {**GOOD, "log_id": "x" * 129},
        "bad_task_name": {**GOOD, "task": "../x"},
        "bad_timestamp": {**GOOD, "timestamp": "yesterday"},
        "bad_enum:decision": {**GOOD, "decision": "maybe"},
        "out_of_range:user_rating": {**GOOD, "user_rating": 0},
        "bad_type:failure_reasons": {**GOOD, "failure_reasons": ["a", 1]},
        "bad_enum:messages.role": {**GOOD, "messages": [{"role": "robot", "content": "x"}]},
        "missing_field:messages.content": {**GOOD, "messages": [{"role": "user"}]},
        "not_an_object": [GOOD],
    }
    for code, record in cases.items():
        assert validate_record(record)[0] == code
        assert record_problems(record)[0][1]

"""Feedback on earlier calls: its contract, its lake table, and the joined view of calls with their latest feedback.

A feedback line (`"kind": "feedback"`) names a call by log_id and gives what a person did with its answer, at any
time before or after the call is ingested. Every valid feedback record is kept in lake/feedback/date=<feedback day>/;
a call's decision, final_output, user_rating and quality_score are read through `joined_calls_sql`, which overrides
each with the latest feedback (by feedback_at, ties by content hash) that gives it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pyarrow as pa

from ft_pipeline.core.retention import FEEDBACK_TABLE
from ft_pipeline.core.schema import (
    FEEDBACK_CONTRACT,
    UTC_US,
    LineLimits,
    contract,
    record_problems,
    structure_problem,
    timestamp_day,
)

TABLE = FEEDBACK_TABLE
KIND = "feedback"

# Lake columns of feedback, in order; contract fields keep their names (but kind, which every row has), the rest is lineage.
FEEDBACK_SCHEMA = pa.schema(
    [
        ("log_id", pa.string()),
        ("feedback_at", UTC_US),
        ("decision", pa.string()),
        ("final_output", pa.string()),
        ("user_rating", pa.float64()),
        ("quality_score", pa.float64()),
        ("comment", pa.string()),
        ("reviewer", pa.string()),
        ("metadata", pa.string()),
        ("extra", pa.string()),
        ("content_hash", pa.string()),
        ("source_file", pa.string()),
        ("ingested_at", UTC_US),
    ]
)
EMPTY_REASON = "empty_feedback"
DEFAULT_LIMITS = LineLimits()


@cache
def given_one_of() -> tuple[str, ...]:
    """The fields of which a feedback record must give at least one, not null (the contract's anyOf)."""
    return tuple(option["required"][0] for option in contract(FEEDBACK_CONTRACT)["anyOf"])


def feedback_problem(record: Any, limits: LineLimits = DEFAULT_LIMITS) -> tuple[str, str] | None:
    """The quarantine reason and detail of one parsed feedback record (None when valid): structure, contract, content, day."""
    problem = structure_problem(record, limits)
    if problem:
        return problem
    problems = record_problems(record, FEEDBACK_CONTRACT)
    if problems:
        return problems[0]
    if all(record.get(name) is None for name in given_one_of()):
        return EMPTY_REASON, f"a feedback record must give at least one of {', '.join(given_one_of())}"
    if timestamp_day(record["feedback_at"]) is None:
        return "out_of_range:feedback_at", "feedback_at names no UTC day of the years 1 to 9999"
    return None

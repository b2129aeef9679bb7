"""Feedback on earlier calls: its contract, its lake table, and the joined view of calls with their latest feedback.

A feedback line (`"kind": "feedback"`) names a call by log_id and gives what a person did with its answer, at any
time before or after the call is ingested. Every valid feedback record is kept in lake/feedback/date=<feedback day>/;
a call's decision, final_output, user_rating and quality_score are read through `create_joined_view`, which overrides
each with the latest feedback (by feedback_at, ties by content hash) that gives it. Its ingested_at becomes the time
the last of those winning records arrived, so a call settled by late feedback is a new example then, once.

Feedback for a call of a day already settled makes that day stale: ingest records the day in state/stale_days.json
with the run that found it, and the settlements build of the day clears it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from ft_pipeline.core.aggregates import literal
from ft_pipeline.core.io import partition_dates, partition_file, write_json_atomic
from ft_pipeline.core.locks import hold
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
from ft_pipeline.settings import Settings

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


# the call columns feedback overrides; decision and final_output travel together, from the same feedback record
VERDICT = ("decision", "final_output")
SCORES = ("user_rating", "quality_score")
# latest first by feedback_at; two records given at the same instant are ordered by content, whatever order they came in
LATEST = "(feedback_at, content_hash)"
STALE_FILE = "stale_days.json"
# feedback records whose call is not in the lake yet, by log_id (kept by ingest)
WAITING_FILE = "feedback_waiting.parquet"


def feedback_files(lake_dir: Path) -> list[Path]:
    """The parquet files of every feedback partition, by day."""
    return [partition_file(lake_dir, TABLE, d) for d in partition_dates(lake_dir, TABLE)]


def latest_feedback_sql(calls: str, files: list[Path]) -> str:
    """SQL: per log_id of relation `calls` with feedback in `files`, the winning verdict (a struct of decision and
    final_output), user_rating, quality_score, when the last winner arrived, and how many feedback records it has."""
    # only the feedback of these calls is read: a semi-join on log_id, however many days of feedback the lake holds
    source = (
        f"SELECT * FROM read_parquet([{', '.join(literal(str(f)) for f in files)}]) WHERE log_id IN (SELECT log_id FROM {calls})"
    )
    verdict = " OR ".join(f"{name} IS NOT NULL" for name in VERDICT)
    winners = {
        "verdict": ("{'decision': coalesce(decision, 'edited'), 'final_output': final_output}", verdict),
        **{name: (name, f"{name} IS NOT NULL") for name in SCORES},
    }
    picks = ", ".join(f"arg_max({value}, {LATEST}) FILTER (WHERE {given}) AS {name}" for name, (value, given) in winners.items())
    arrived = ", ".join(f"arg_max(ingested_at, {LATEST}) FILTER (WHERE {given})" for _, given in winners.values())
    return f"SELECT log_id, {picks}, greatest({arrived}) AS ingested_at, count(*) AS feedback FROM ({source}) GROUP BY log_id"


def create_joined_view(con: Any, name: str, calls: str, lake_dir: Path) -> None:
    """Temp view `name`: relation `calls` (raw_logs rows, any extra columns kept) as its latest feedback leaves them:
    decision, final_output, user_rating and quality_score overridden where feedback gives them, ingested_at the later of
    the call's and its winning feedback's, and a column `feedback_records` with how many feedback records each call has.

    The winning feedback is read from the lake once, into temp table `<name>_feedback`, however often the view is
    queried (a settlement reads the day twice, the daily aggregates once per section).
    """
    files = feedback_files(lake_dir)
    if not files:
        con.execute(f"CREATE TEMP VIEW {name} AS SELECT *, 0 AS feedback_records FROM {calls}")
        return
    con.execute(f"CREATE TEMP TABLE {name}_feedback AS {latest_feedback_sql(calls, files)}")
    con.execute(f"""
        CREATE TEMP VIEW {name} AS
        SELECT c.* REPLACE (
            CASE WHEN f.verdict IS NULL THEN c.decision ELSE f.verdict.decision END AS decision,
            CASE WHEN f.verdict IS NULL THEN c.final_output ELSE f.verdict.final_output END AS final_output,
            coalesce(f.user_rating, c.user_rating) AS user_rating,
            coalesce(f.quality_score, c.quality_score) AS quality_score,
            greatest(c.ingested_at, f.ingested_at) AS ingested_at), coalesce(f.feedback, 0) AS feedback_records
        FROM {calls} c LEFT JOIN {name}_feedback f ON c.log_id = f.log_id""")


def stale_days(settings: Settings) -> dict[str, str]:
    """The raw_logs days whose settlements are older than feedback on their calls, each with the ingest run that found it."""
    path = settings.state_dir / STALE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def mark_stale(settings: Settings, days: Iterable[str], batch: str) -> None:
    """Record that ingest run `batch` gave the calls of `days` new feedback (a day marked before gets the new batch)."""
    days = sorted(days)
    if not days:
        return
    with hold(settings.root, "stale-days"):
        write_json_atomic({**stale_days(settings), **dict.fromkeys(days, batch)}, settings.state_dir / STALE_FILE)


def clear_stale(settings: Settings, day: str, batch: str | None) -> None:
    """Forget a stale day once its settlements were built from the feedback of `batch`, the batch read before the build.

    A day marked again meanwhile keeps its newer batch: that feedback may have come after the build read the lake.
    """
    if batch is None:
        return
    with hold(settings.root, "stale-days"):
        days = stale_days(settings)
        if days.get(day) == batch:
            del days[day]
            write_json_atomic(days, settings.state_dir / STALE_FILE)

"""Settlements: the accepted or edited records of a day that pass the quality filters, redacted and with edit metrics.

A record is settled when its decision is `accepted` (final text = output; a final_output that differs
from the output makes the record ambiguous and excludes it) or `edited` (final text = final_output).
Every excluded record gets exactly one reason, the first that applies, in the order of EXCLUSION_REASONS.

Near-duplicates (same task, prompt and final text after normalising case and whitespace) are removed
within the partition being built only: the best quality score wins, then the newest, then the smallest
log_id. Deduplicating across days would make a day's result depend on other days and on the order in
which they were built, so a re-run of one partition could change another; the dataset builder
deduplicates across all partitions when it assembles a task's training set.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ft_pipeline.core.edits import edit_metrics
from ft_pipeline.core.io import partition_file, write_parquet_atomic
from ft_pipeline.core.redaction import PII_TYPES, redact_column
from ft_pipeline.core.schema import RAW_LOG_SCHEMA
from ft_pipeline.settings import Settings

RAW_TABLE = "raw_logs"
TABLE = "settlements"

# Free-text columns a person or the model wrote; anything else is an id, an enum or a number.
REDACTED_COLUMNS = ("prompt", "messages", "system_prompt", "output", "final_output", "metadata", "extra", "user_id")
JSON_COLUMNS = ("messages", "metadata", "extra")

SETTLED_FIELDS = [
    pa.field("final_text", pa.string()),
    pa.field("retained", pa.float64()),
    pa.field("edit_distance", pa.int64()),
    pa.field("deleted_spans", pa.list_(pa.string())),
    pa.field("added_spans", pa.list_(pa.string())),
    pa.field("weight", pa.float64()),
]

EXCLUSION_REASONS = (
    "not_settled:rejected",
    "not_settled:pending",
    "accepted_final_differs",
    "edited_without_final",
    "low_quality_score",
    "low_confidence",
    "low_user_rating",
    "final_too_short",
    "near_duplicate",
)

# (lower bound of quality_score, training weight), best first; no score or below the last bound weighs 1.0.
WEIGHT_STEPS = ((9.0, 2.0), (8.0, 1.5), (7.0, 1.0))


@dataclass
class SettleResult:
    """The settled table of one partition and what happened to the records that did not make it."""

    table: pa.Table
    rows_in: int
    excluded: dict[str, int] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    source_missing: bool = False

    @property
    def settled(self) -> int:
        """Records written to the partition."""
        return self.table.num_rows

    @property
    def edited(self) -> int:
        """Settled records whose final text differs from the output."""
        return pc.sum(pc.greater(self.table["edit_distance"], 0)).as_py() or 0


def summary(results: list[SettleResult]) -> dict[str, int | float | None]:
    """Counts and rates over one or more partitions: every exclusion reason and PII type, zeros included."""
    settled = sum(r.settled for r in results)
    retained = sum(pc.sum(r.table["retained"]).as_py() or 0.0 for r in results)
    return {
        "rows_in": sum(r.rows_in for r in results),
        "settled": settled,
        "excluded": sum(sum(r.excluded.values()) for r in results),
        **{f"excluded:{reason}": sum(r.excluded.get(reason, 0) for r in results) for reason in EXCLUSION_REASONS},
        **{f"pii:{kind}": sum(r.pii.get(kind, 0) for r in results) for kind in PII_TYPES},
        "mean_retained": retained / settled if settled else None,
        "edit_rate": sum(r.edited for r in results) / settled if settled else None,
    }


def settlements_schema(raw_schema: pa.Schema) -> pa.Schema:
    """The settlements schema: every raw_logs column, then the settlement columns."""
    return pa.schema(list(raw_schema) + SETTLED_FIELDS)


def _present(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a text column holds something other than null or whitespace."""
    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)


def _below(values: pa.ChunkedArray, minimum: float | None) -> pa.ChunkedArray:
    """True where a value is present and under `minimum`; all False when the filter is off."""
    if minimum is None:
        return pa.chunked_array([pa.array(np.zeros(len(values), dtype=bool))])
    return pc.fill_null(pc.less(values, minimum), False)


def _reasons(raw: pa.Table, settings: Settings) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Per row, the exclusion reason (null when kept) and whether the final text is final_output."""
    decision = raw["decision"]
    output, final_output = raw["output"], raw["final_output"]
    accepted = pc.equal(decision, "accepted")
    edited = pc.equal(decision, "edited")
    has_final = _present(final_output)
    same_final = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(final_output), pc.utf8_trim_whitespace(output)), False)
    use_final = pc.and_(edited, has_final)
    final_text = pc.if_else(use_final, final_output, output)
    too_short = _below(pc.utf8_length(pc.utf8_trim_whitespace(final_text)), settings.min_final_chars)
    # The first true condition names the reason, so the order here is the order of EXCLUSION_REASONS.
    conditions = [
        (pc.invert(pc.or_(accepted, edited)), pc.binary_join_element_wise("not_settled:", decision, "")),
        (pc.and_(accepted, pc.and_(has_final, pc.invert(same_final))), "accepted_final_differs"),
        (pc.and_(edited, pc.invert(has_final)), "edited_without_final"),
        (_below(raw["quality_score"], settings.min_quality_score), "low_quality_score"),
        (_below(raw["confidence"], settings.min_confidence), "low_confidence"),
        (_below(raw["user_rating"], settings.min_user_rating), "low_user_rating"),
        (too_short, "final_too_short"),
    ]
    reason = pa.nulls(raw.num_rows, pa.string())
    for condition, label in reversed(conditions):
        reason = pc.if_else(condition, label, reason)
    return reason, use_final


def _normalised(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text lowercased with runs of whitespace collapsed and the ends trimmed."""
    return pc.utf8_lower(pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " ")))


def _keep_best_of_duplicates(table: pa.Table) -> pa.Array:
    """Row indices of `table` that survive near-duplicate removal within each task, ascending."""
    keys = pa.table(
        {
            "task": table["task"],
            "prompt": _normalised(table["prompt"]),
            "final": _normalised(table["final_text"]),
            "quality_score": table["quality_score"],
            "timestamp": table["timestamp"],
            "log_id": table["log_id"],
            "idx": np.arange(table.num_rows),
        }
    )
    # Best first within each key (missing quality sorts last), so the first row of each run of equal keys wins.
    ordered = keys.sort_by(
        [("task", "ascending"), ("prompt", "ascending"), ("final", "ascending"),
         ("quality_score", "descending", "at_end"), ("timestamp", "descending"), ("log_id", "ascending")]
    )
    same = np.ones(ordered.num_rows - 1, dtype=bool)
    for name in ("task", "prompt", "final"):
        column = ordered[name]
        same &= pc.fill_null(pc.equal(column[1:], column[:-1]), False).to_numpy(zero_copy_only=False)
    first = np.concatenate([[True], ~same])
    return pa.array(np.sort(ordered["idx"].to_numpy()[first]))


def _span_column(rows: int, changed: np.ndarray, spans: list[list[str]]) -> pa.ListArray:
    """A list<string> column that is empty everywhere except the changed rows, which get `spans`."""
    lengths = np.zeros(rows, dtype=np.int32)
    lengths[changed] = [len(s) for s in spans]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)])
    values = pa.array([text for row in spans for text in row], type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _edit_columns(output: pa.ChunkedArray, final_text: pa.ChunkedArray) -> dict[str, pa.Array]:
    """retained, edit_distance and span columns; only rows whose text changed go through the word diff."""
    rows = len(output)
    changed = np.flatnonzero(pc.not_equal(output, final_text).to_numpy(zero_copy_only=False))
    metrics = [
        edit_metrics(a, b)
        for a, b in zip(output.take(changed).to_pylist(), final_text.take(changed).to_pylist())
    ]
    retained = np.ones(rows)
    retained[changed] = [m.retained for m in metrics]
    distance = np.zeros(rows, dtype=np.int64)
    distance[changed] = [m.edit_distance for m in metrics]
    return {
        "retained": pa.array(retained),
        "edit_distance": pa.array(distance),
        "deleted_spans": _span_column(rows, changed, [m.deleted_spans for m in metrics]),
        "added_spans": _span_column(rows, changed, [m.added_spans for m in metrics]),
    }


def _weights(quality: pa.ChunkedArray) -> pa.ChunkedArray:
    """Training weight per row from quality_score (WEIGHT_STEPS; 1.0 without a score)."""
    weight = pa.scalar(1.0)
    for bound, value in reversed(WEIGHT_STEPS):
        weight = pc.if_else(pc.fill_null(pc.greater_equal(quality, bound), False), value, weight)
    return weight


def _value_counts(values: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    """Distinct values of a string column and how often each occurs."""
    counts = pc.value_counts(values)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def settle(raw: pa.Table, settings: Settings) -> SettleResult:
    """Settle one partition of raw_logs: filter, redact, deduplicate, measure edits and weigh."""
    reason, use_final = _reasons(raw, settings)
    kept = pc.is_null(reason)
    excluded = Counter(dict(zip(*_value_counts(pc.filter(reason, pc.invert(kept))))))
    table = raw.filter(kept)
    use_final = pc.filter(use_final, kept)

    pii: Counter = Counter()
    for name in REDACTED_COLUMNS:
        if name in table.column_names:
            cleaned, counts = redact_column(table[name], json_text=name in JSON_COLUMNS)
            table = table.set_column(table.schema.get_field_index(name), name, cleaned)
            pii.update(counts)
    # Built from the redacted columns, so the approved text never carries PII either.
    table = table.append_column("final_text", pc.if_else(use_final, table["final_output"], table["output"]))

    survivors = _keep_best_of_duplicates(table) if table.num_rows else pa.array([], pa.int64())
    excluded["near_duplicate"] += table.num_rows - len(survivors)
    table = table.take(survivors)

    for name, column in _edit_columns(table["output"], table["final_text"]).items():
        table = table.append_column(name, column)
    table = table.append_column("weight", _weights(table["quality_score"]))
    table = table.sort_by([("timestamp", "ascending"), ("log_id", "ascending")])
    return SettleResult(
        table=table.cast(settlements_schema(raw.schema)),
        rows_in=raw.num_rows,
        excluded={r: c for r, c in excluded.items() if c},
        pii=dict(pii),
    )


def settlements_path(settings: Settings, date: str) -> Path:
    """The parquet file of one day's settlements."""
    return partition_file(settings.lake_dir, TABLE, date)


def build_partition(settings: Settings, date: str) -> SettleResult:
    """Read the raw_logs partition of `date`, settle it and write the settlements partition atomically.

    A day without a raw_logs file (ingest writes none for a day without records) settles to an empty
    partition, so downstream can tell a processed empty day from one never built.
    """
    source = partition_file(settings.lake_dir, RAW_TABLE, date)
    # One schema for every partition, whatever wrote the raw file, so DuckDB globs over the table line up.
    missing = not source.is_file()
    raw = RAW_LOG_SCHEMA.empty_table() if missing else pq.read_table(source).select(RAW_LOG_SCHEMA.names).cast(RAW_LOG_SCHEMA)
    result = settle(raw, settings)
    result.source_missing = missing
    write_parquet_atomic(result.table, settlements_path(settings, date))
    return result


def preview_markdown(table: pa.Table, rows: int = 5, width: int = 60) -> str:
    """A markdown table of the first settled rows: id, task, decision, retained, weight and shortened texts."""
    columns = ["log_id", "task", "decision", "retained", "weight", "prompt", "final_text"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.slice(0, rows).select(columns).to_pylist():
        cells = []
        for name in columns:
            value = row[name]
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            text = " ".join(text.split()).replace("|", "\\|")
            cells.append(text if len(text) <= width else text[: width - 1] + "…")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""Settlements: the accepted or edited records of a day that pass the quality filters, redacted and with edit metrics.

A record is settled when its decision is `accepted` (final text = output; a final_output that differs
from the output makes the record ambiguous and excludes it) or `edited` (final text = final_output).
Every excluded record gets exactly one reason, the first that applies, in the order of EXCLUSION_REASONS.

A call is settled as its latest feedback leaves it (core/feedback.py): decision, final_output, user_rating and
quality_score come from the feedback records on its log_id, from any day, when there are some; its ingested_at is
then when the winning feedback arrived, so an example settled by late feedback counts as new for the retrain.

Near-duplicates (same task, prompt and final text after redaction and after normalising case and
whitespace) are removed within the partition being built only: the best quality score wins, then the
newest, then the smallest log_id. Deduplicating across days would make a day's result depend on other
days and on the order in which they were built, so a re-run of one partition could change another; the
dataset builder deduplicates across all partitions when it assembles a task's training set.

A partition is settled in bounded memory, in two streamed passes over the raw parquet file. The first
reads only the columns the filters and the duplicate key need, batch by batch, and leaves in DuckDB one
small row per kept record (the normalised texts as 128-bit MD5 hashes, so the key table does not hold
the texts; a collision is astronomically unlikely); a window function there picks the survivors. The
second has DuckDB join the file to the survivors and sort them, spilling to disk beyond its memory limit,
and streams them through redaction and the edit metrics into a ParquetWriter. PII counts are those of
the records written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ft_pipeline.core.aggregates import literal
from ft_pipeline.core.edits import edit_metrics
from ft_pipeline.core.feedback import clear_stale, create_joined_view, stale_days
from ft_pipeline.core.io import (
    atomic_path,
    checked_date,
    partition_file,
    remove_stale_temps,
    write_jsonl_atomic,
    write_parquet_atomic,
)
from ft_pipeline.core.locks import hold
from ft_pipeline.core.redaction import PII_TYPES, redact_column
from ft_pipeline.core.schema import RAW_LOG_SCHEMA
from ft_pipeline.core.scratch import scratch_dir, sweep
from ft_pipeline.settings import Settings

RAW_TABLE = "raw_logs"
TABLE = "settlements"

# log_id and task are identifiers that other stages key on: a record whose identifier holds PII is excluded (and named in
# the stage's quarantine) rather than redacted. decision is an enum and content_hash is ours.
ID_COLUMNS = ("log_id", "task")
# Every other text column leaves raw redacted: what people and the model wrote, and every name a producer chose
# (agents, topics, variants, experiment ids, models, failure reasons, metadata and extra values, the source file).
REDACTED_COLUMNS = tuple(
    f.name
    for f in RAW_LOG_SCHEMA
    if (pa.types.is_string(f.type) or pa.types.is_list(f.type)) and f.name not in (*ID_COLUMNS, "decision", "content_hash")
)
JSON_COLUMNS = ("messages", "metadata", "extra")

SETTLED_FIELDS = [
    pa.field("final_text", pa.string()),
    pa.field("retained", pa.float64()),
    pa.field("edit_distance", pa.int64()),
    pa.field("deleted_spans", pa.list_(pa.string())),
    pa.field("added_spans", pa.list_(pa.string())),
    pa.field("weight", pa.float64()),
]
# Every raw_logs column, then the settlement columns; one schema for every partition, whatever wrote the
# raw file, so DuckDB globs over the table line up.
SCHEMA = pa.schema(list(RAW_LOG_SCHEMA) + SETTLED_FIELDS)

EXCLUSION_REASONS = (
    "pii_in_identifier",
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

# The columns the filters and the near-duplicate key read; the first pass reads only these.
KEY_SCHEMA = pa.schema(
    [pa.field("row", pa.int64())]
    + [
        RAW_LOG_SCHEMA.field(name)
        for name in (
            "log_id",
            "timestamp",
            "task",
            "prompt",
            "output",
            "final_output",
            "decision",
            "quality_score",
            "confidence",
            "user_rating",
        )
    ]
)
# Rows per streamed batch and per written row group: a batch and its redacted, measured copy stay near 100 MB.
BATCH_ROWS = 16_384
# Beyond this DuckDB spills the key table and the sort of the survivors to disk, so memory does not grow with the
# day; its parquet reads and sort runs need about 300 MB whatever the size of the day.
DUCKDB_MEMORY_LIMIT = "512MB"
PREVIEW_ROWS = 5


@dataclass
class SettleResult:
    """What settling one partition wrote, and what happened to the records that did not make it."""

    rows_in: int = 0
    settled: int = 0
    edited: int = 0
    retained_sum: float = 0.0
    excluded: dict[str, int] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    preview: pa.Table = field(default_factory=SCHEMA.empty_table)
    source_missing: bool = False
    quarantined: list[dict] = field(default_factory=list)  # this stage's quarantine: log_id (redacted), reason, detail
    with_feedback: int = 0  # records of the day with feedback records, which decided what they settle as


def summary(results: list[SettleResult]) -> dict[str, int | float | None]:
    """Counts and rates over one or more partitions: every exclusion reason and PII type, zeros included."""
    settled = sum(r.settled for r in results)
    return {
        "rows_in": sum(r.rows_in for r in results),
        "settled": settled,
        "excluded": sum(sum(r.excluded.values()) for r in results),
        "quarantined": sum(len(r.quarantined) for r in results),
        "with_feedback": sum(r.with_feedback for r in results),
        **{f"excluded:{reason}": sum(r.excluded.get(reason, 0) for r in results) for reason in EXCLUSION_REASONS},
        **{f"pii:{kind}": sum(r.pii.get(kind, 0) for r in results) for kind in PII_TYPES},
        "mean_retained": sum(r.retained_sum for r in results) / settled if settled else None,
        "edit_rate": sum(r.edited for r in results) / settled if settled else None,
    }


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
        (_holds_pii(raw, ID_COLUMNS), "pii_in_identifier"),
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


def _holds_pii(raw: pa.Table, columns: tuple[str, ...]) -> pa.Array:
    """True where one of the identifier columns holds PII (an e-mail, a phone, a key; not just a random-looking id)."""
    found = pa.array(np.zeros(raw.num_rows, dtype=bool))
    for name in columns:
        redacted, counts = redact_column(raw[name], identifiers=True)
        if counts:
            found = pc.or_(found, pc.fill_null(pc.not_equal(redacted, raw[name].combine_chunks()), False))
    return found


def _duplicate_key(text: pa.ChunkedArray) -> pa.Array:
    """Text as near-duplicate detection compares it: redacted, lowercased, whitespace runs collapsed, ends trimmed."""
    redacted, _ = redact_column(text)
    # The regex replace is ten times slower than a match, and leaves text without a run of two whitespace
    # characters or a whitespace other than the space (RE2's \s is [\t\n\f\r ]) unchanged: apply it only where it bites.
    runs = pc.fill_null(pc.match_substring_regex(redacted, r"\s\s|[\t\n\f\r]"), False)
    collapsed = pc.replace_with_mask(redacted, runs, pc.replace_substring_regex(redacted.filter(runs), r"\s+", " "))
    return pc.utf8_lower(pc.utf8_trim_whitespace(collapsed))


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
    metrics = [edit_metrics(a, b) for a, b in zip(output.take(changed).to_pylist(), final_text.take(changed).to_pylist())]
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


def _select_survivors(con: duckdb.DuckDBPyConnection, settings: Settings, result: SettleResult) -> None:
    """Fill DuckDB table `survivors` (row, use_final) with the rows of view `calls` to settle; count rows_in and exclusions into `result`."""
    columns = ", ".join(f'"{name}"' for name in KEY_SCHEMA.names[1:])
    reader = con.sql(f"SELECT file_row_number AS row, {columns} FROM calls").to_arrow_reader(BATCH_ROWS)
    # Inserts go through a second connection to the same database: a query on `con` would end the stream.
    keys = con.cursor()
    keys.execute(
        "CREATE TABLE keys (row BIGINT, task VARCHAR, prompt_key UHUGEINT, final_key UHUGEINT, "
        "quality_score DOUBLE, timestamp TIMESTAMPTZ, log_id VARCHAR, use_final BOOLEAN)"
    )
    excluded: Counter = Counter()
    for batch in reader:
        raw = pa.Table.from_batches([batch]).cast(KEY_SCHEMA)
        result.rows_in += raw.num_rows
        reason, use_final = _reasons(raw, settings)
        refused = pc.fill_null(pc.equal(reason, "pii_in_identifier"), False)
        for row in raw.filter(refused).select(["log_id"]).to_pylist():
            result.quarantined.append(
                {
                    "log_id": redact_column(pa.array([row["log_id"]]))[0][0].as_py(),
                    "reason": "pii_in_identifier",
                    "detail": "its log_id or task holds personal data or a secret, which no identifier may carry",
                }
            )
        kept = pc.is_null(reason)
        excluded.update(dict(zip(*_value_counts(pc.filter(reason, pc.invert(kept))))))
        raw, use_final = raw.filter(kept), pc.filter(use_final, kept)
        batch_keys = raw.select(["row", "task", "quality_score", "timestamp", "log_id"]).append_column("use_final", use_final)
        batch_keys = batch_keys.append_column("prompt", _duplicate_key(raw["prompt"]))
        batch_keys = batch_keys.append_column("final", _duplicate_key(pc.if_else(use_final, raw["final_output"], raw["output"])))
        keys.register("batch_keys", batch_keys)
        keys.execute(
            "INSERT INTO keys SELECT row, task, md5_number(prompt), md5_number(final), quality_score, timestamp, log_id, use_final "
            "FROM batch_keys"
        )
    keys.close()
    # A null key part never equals anything, so such a row is its own group; otherwise the best row of a group wins.
    con.execute(
        "CREATE TABLE survivors AS SELECT row, use_final FROM keys "
        "QUALIFY task IS NULL OR prompt_key IS NULL OR final_key IS NULL OR row_number() OVER ("
        "PARTITION BY task, prompt_key, final_key "
        "ORDER BY quality_score DESC NULLS LAST, timestamp DESC NULLS LAST, log_id NULLS LAST, row) = 1"
    )
    kept_rows, surviving = con.execute("SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM survivors)").fetchall()[0]
    excluded["near_duplicate"] += kept_rows - surviving
    result.excluded = {r: c for r, c in excluded.items() if c}


def _settled(raw: pa.Table, use_final: pa.ChunkedArray, pii: Counter) -> pa.Table:
    """Surviving raw rows redacted, with final text, edit metrics and weight, in the settlements schema; counts PII into `pii`."""
    for name in REDACTED_COLUMNS:
        cleaned, counts = redact_column(raw[name], json_text=name in JSON_COLUMNS)
        raw = raw.set_column(raw.schema.get_field_index(name), name, cleaned)
        pii.update(counts)
    # Built from the redacted columns, so the approved text never carries PII either.
    table = raw.append_column("final_text", pc.if_else(use_final, raw["final_output"], raw["output"]))
    for name, column in _edit_columns(table["output"], table["final_text"]).items():
        table = table.append_column(name, column)
    return table.append_column("weight", _weights(table["quality_score"])).cast(SCHEMA)


def _settled_or_quarantined(raw: pa.Table, use_final: pa.ChunkedArray, pii: Counter, result: SettleResult) -> pa.Table:
    """`_settled` of a batch; when it fails, row by row, so that a record it fails on is quarantined and the rest settle."""
    found: Counter = Counter()
    try:
        table = _settled(raw, use_final, found)
    except Exception:  # any error of one record's text: find the record, the batch does not stop the day
        parts = []
        for i in range(raw.num_rows):
            row_found: Counter = Counter()
            try:
                parts.append(_settled(raw.slice(i, 1), use_final.slice(i, 1), row_found))
            except Exception as exc:
                log_id = redact_column(raw["log_id"].slice(i, 1))[0][0].as_py()
                result.quarantined.append(
                    {"log_id": log_id, "reason": f"settle_failed:{type(exc).__name__}", "detail": "settling this record failed"}
                )
                continue
            found.update(row_found)
        table = pa.concat_tables(parts) if parts else SCHEMA.empty_table()
    pii.update(found)
    return table


def _settle_file(source: Path, target: Path, settings: Settings) -> SettleResult:
    """Settle the raw_logs parquet file `source` into the settlements parquet file `target`, written atomically."""
    result = SettleResult()
    pii: Counter = Counter()
    # Spill files on the data dir's filesystem, not in a /tmp that may be memory, and outside the lake.
    with scratch_dir(settings.root, "settlements") as spill, duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")  # timestamps come back in UTC, as raw_logs stores them
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        # Each thread pins its own blocks while sorting wide rows: with two, 512 MB runs out instead of spilling.
        con.execute("SET threads = 1")
        con.execute("SET temp_directory = ?", [str(spill)])
        # each call as its latest feedback leaves it: both passes read the day through this view
        raw = f"read_parquet({literal(str(source))}, file_row_number = true)"
        create_joined_view(con, "calls", raw, settings.lake_dir)
        _select_survivors(con, settings, result)
        (result.with_feedback,) = con.execute("SELECT count(*) FILTER (feedback_records > 0) FROM calls").fetchall()[0]
        columns = ", ".join(f'r."{name}"' for name in RAW_LOG_SCHEMA.names)
        # Ordered by time then id; the file row only breaks ties of repeated ids, so re-runs write the same bytes.
        reader = con.sql(
            f"SELECT {columns}, s.use_final FROM calls r "
            "JOIN survivors s ON r.file_row_number = s.row "
            "ORDER BY r.timestamp NULLS LAST, r.log_id NULLS LAST, r.file_row_number"
        ).to_arrow_reader(BATCH_ROWS)
        remove_stale_temps(target)  # a killed build's; the day's lock keeps every other writer out
        with atomic_path(target) as tmp, pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for batch in reader:
                table = pa.Table.from_batches([batch])
                settled = _settled_or_quarantined(
                    table.drop_columns("use_final").cast(RAW_LOG_SCHEMA), table["use_final"], pii, result
                )
                writer.write_table(settled)
                if result.preview.num_rows < PREVIEW_ROWS:
                    # A copy (take), so the preview does not keep the whole batch alive.
                    wanted = np.arange(min(PREVIEW_ROWS - result.preview.num_rows, settled.num_rows))
                    result.preview = pa.concat_tables([result.preview, settled.take(wanted)])
                result.settled += settled.num_rows
                result.edited += pc.sum(pc.greater(settled["edit_distance"], 0)).as_py() or 0
                result.retained_sum += pc.sum(settled["retained"]).as_py() or 0.0
    result.pii = dict(pii)
    return result


def settlements_path(settings: Settings, date: str) -> Path:
    """The parquet file of one day's settlements."""
    return partition_file(settings.lake_dir, TABLE, date)


def is_stale(settings: Settings, date: str) -> bool:
    """Whether a day's settlements are missing or older than its raw_logs partition (written since they were built)."""
    target, source = settlements_path(settings, date), partition_file(settings.lake_dir, RAW_TABLE, date)
    if not target.is_file():
        return True
    return source.is_file() and source.stat().st_mtime_ns > target.stat().st_mtime_ns


def build_partition(settings: Settings, date: str) -> SettleResult:
    """Read the raw_logs partition of `date`, settle it and write the settlements partition atomically.

    A day without a raw_logs file (ingest writes none for a day without records) settles to an empty
    partition, so downstream can tell a processed empty day from one never built; a day whose raw file
    the retention expired keeps the settlements it has, for the lineage of the datasets built from them.
    Builds of one day are serialized by its `settlements-<date>` lock.
    """
    with hold(settings.root, f"settlements-{checked_date(date)}"):
        sweep(settings.root, "settlements")
        batch = stale_days(settings).get(date)  # read before the feedback is: feedback marked after it keeps the day stale
        source = partition_file(settings.lake_dir, RAW_TABLE, date)
        if not source.is_file():
            if not settlements_path(settings, date).is_file():
                write_parquet_atomic(SCHEMA.empty_table(), settlements_path(settings, date))
            clear_stale(settings, date, batch)  # no calls left to settle again
            return SettleResult(source_missing=True)
        result = _settle_file(source, settlements_path(settings, date), settings)
        clear_stale(settings, date, batch)
        # the stage's own quarantine, one file per day, rewritten by every build: names and reasons, never record text
        target = quarantine_path(settings, date)
        if result.quarantined:
            write_jsonl_atomic(result.quarantined, target)
        else:
            target.unlink(missing_ok=True)
        return result


def quarantine_path(settings: Settings, date: str) -> Path:
    """The settlements stage's quarantine file of one day."""
    return settings.quarantine_dir / TABLE / f"date={checked_date(date)}.jsonl"


def preview_markdown(table: pa.Table, rows: int = PREVIEW_ROWS, width: int = 60) -> str:
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

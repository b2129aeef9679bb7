"""Per-day pieces of the pattern report: counts, sums and exact latency value counts per group and day, edit
n-gram counts, tone marker sums, attempts, failure reasons and experiment arms of one day of raw_logs and
settlements. Each piece adds up across days, so the report combines them instead of re-reading the lake."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ft_pipeline.core.io import (
    atomic_path,
    checked_date,
    partition_file,
    partition_stamp,
    partition_stamps,
    write_parquet_atomic,
)
from ft_pipeline.core.redaction import redact

TABLE = "daily_aggregates"
# The lake tables a day's aggregates are computed from.
SOURCES = ("raw_logs", "settlements")
# Report windows in days back from the newest record's day.
WINDOWS = {"7d": 7, "30d": 30, "90d": 90}
HORIZON_DAYS = max(WINDOWS.values())
# The rollups: the days older than the longest window when they were folded, added up as one day, and the days of the
# window (the windows read them day by day). Late feedback rewrites recent days, so it refolds only the second one,
# from the window's files; a rewritten older day refolds both.
ROLLUPS = ("old", "recent")
# The phrase totals: the n-grams of every day the rollups hold added up per scope and phrase, deleted and added side by
# side, so a report joins the n-grams of the days in no rollup to them instead of grouping every rollup's n-grams again.
PHRASES = "phrases"
PHRASES_SCHEMA = pa.schema([("key", pa.string()), ("item", pa.string()), ("deleted", pa.int64()), ("added", pa.int64())])
# Days in no rollup are read from their own files; once FOLD_DAYS of them are, they are folded in.
FOLD_DAYS = 30
# A group's latency values in the rollup stay exact up to this many distinct ones; past it each becomes the
# representative of its logarithmic bucket, within LATENCY_ACCURACY of it (as in DDSketch), so the distribution grows
# with the range of the latencies, not with the records.
LATENCY_EXACT_VALUES = 2048
LATENCY_ACCURACY = 0.005
ROLLUP_META = b"ft_pipeline_rollup"
DIMENSIONS = ("task", "agent", "topic", "reasoning_mode", "model", "adapter_version", "user_id", "experiment_id", "variant")
# Columns the aggregates read, with the type they get when a table lacks them (older or hand-made files).
RAW_COLUMNS = {
    "log_id": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "decision": "VARCHAR",
    "quality_score": "DOUBLE",
    "confidence": "DOUBLE",
    "attempt": "BIGINT",
    "failure_reasons": "VARCHAR[]",
    "latency_ms": "DOUBLE",
    "cost_usd": "DOUBLE",
    # what feedback overrides (core/feedback.py): the decisions counted are those of each call's latest feedback
    "final_output": "VARCHAR",
    "user_rating": "DOUBLE",
    "ingested_at": "TIMESTAMPTZ",
    **{d: "VARCHAR" for d in DIMENSIONS},
}
SETTLED_COLUMNS = {
    "log_id": "VARCHAR",
    "decision": "VARCHAR",
    "task": "VARCHAR",
    "agent": "VARCHAR",
    "output": "VARCHAR",
    "final_text": "VARCHAR",
    "retained": "DOUBLE",
    "deleted_spans": "VARCHAR[]",
    "added_spans": "VARCHAR[]",
}
# Longest phrase (in words) looked for in edit spans; longer boilerplate still shows as its 8-word pieces.
MAX_PHRASE_WORDS = 8
# A word of an edit span (lower-cased); redaction placeholders such as [email] stay one word.
WORD = r"\[[a-z_]+\]|[\pL\pN']+"
# Tone markers counted in the model output and in the approved text (lower-cased), with how a person names
# them; why: they show the style editors impose.
TONE_MARKERS = {
    "words": (r"\S+", "words"),
    "exclamations": (r"!", "exclamation marks"),
    "questions": (r"\?", "question marks"),
    "hedging": (
        r"\b(?:might|maybe|perhaps|possibly|probably|likely|seems?|somewhat|arguably|i think|i believe|it appears)\b",
        "hedging words",
    ),
    "formal": (
        r"\b(?:furthermore|moreover|therefore|thus|hence|consequently|additionally|regarding|utilize|kindly|sincerely|shall|herein)\b",
        "formal words",
    ),
    "contractions": (r"\b[\pL]+'(?:s|re|ve|ll|d|t|m)\b", "contractions"),
}
# One long table per day; each section fills the columns it needs. Group keys are redacted before grouping (values
# that redact alike are one group); every other key and item is redacted when the day is written.
COLUMNS = {
    "section": "VARCHAR",
    "day": "DATE",
    "dimension": "VARCHAR",
    "key": "VARCHAR",
    "item": "VARCHAR",
    "kind": "VARCHAR",
    "attempt": "BIGINT",
    "value": "DOUBLE",
    "count": "BIGINT",
    "n": "BIGINT",
    "accepted": "BIGINT",
    "edited": "BIGINT",
    "rejected": "BIGINT",
    "pending": "BIGINT",
    "retained_sum": "DOUBLE",
    "retained_n": "BIGINT",
    "quality_sum": "DOUBLE",
    "quality_n": "BIGINT",
    "confidence_sum": "DOUBLE",
    "confidence_n": "BIGINT",
    "cost_sum": "DOUBLE",
    "output_sum": "BIGINT",
    "final_sum": "BIGINT",
}


def literal(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


_DECISIONS = """
    count(*) FILTER (WHERE decision IN ('accepted', 'edited', 'rejected')) AS n,
    count(*) FILTER (WHERE decision = 'accepted') AS accepted,
    count(*) FILTER (WHERE decision = 'edited') AS edited,
    count(*) FILTER (WHERE decision = 'rejected') AS rejected"""
# section -> query over the day's views; each yields a subset of COLUMNS.
SECTIONS = {
    # records and decisions per day of record timestamps (the report's as_of is the newest of these days)
    "totals": f"""SELECT CAST(timestamp AS DATE) AS day, count(*) AS count, {_DECISIONS},
                         count(*) FILTER (WHERE decision = 'pending') AS pending
                  FROM raw GROUP BY ALL""",
    "settled": "SELECT count(*) AS count FROM settled",
    # count: every record of the group (failure reasons' denominator); n: the reviewed ones
    "groups": f"""SELECT day, dimension, key, count(*) AS count, {_DECISIONS},
                         sum(retained) AS retained_sum, count(retained) AS retained_n,
                         sum(quality_score) AS quality_sum, count(quality_score) AS quality_n,
                         sum(confidence) AS confidence_sum, count(confidence) AS confidence_n,
                         sum(cost_usd) AS cost_sum
                  FROM long GROUP BY ALL""",
    # exact latency distribution: each distinct value with its count, bounded by the distinct values
    "latency": """SELECT day, dimension, key, latency_ms AS value, count(*) AS count
                  FROM long WHERE latency_ms IS NOT NULL GROUP BY ALL""",
    "reasons": """WITH reasons AS (SELECT DISTINCT log_id, unnest(failure_reasons) AS reason FROM raw)
                  SELECT dimension, key, reason AS item, count(*) AS count FROM (
                      SELECT dimension, key, log_id FROM long WHERE dimension IN ('agent', 'topic')
                      UNION ALL SELECT 'overall', NULL, log_id FROM raw) s
                  JOIN reasons r USING (log_id) WHERE reason IS NOT NULL GROUP BY ALL""",
    "edited": "SELECT scope AS key, count(*) AS count FROM edits GROUP BY ALL",
    # every phrase of up to MAX_PHRASE_WORDS words with the edits that carry it (an edit counts a phrase once)
    "ngrams": f"""
        WITH spans AS (
            SELECT scope, log_id, 'deleted' AS kind, unnest(deleted_spans) AS span FROM edits
            UNION ALL
            SELECT scope, log_id, 'added' AS kind, unnest(added_spans) AS span FROM edits),
        words AS (
            SELECT scope, log_id, kind, regexp_extract_all(lower(span), {literal(WORD)}) AS w FROM spans),
        starts AS (
            SELECT scope, log_id, kind, w, unnest(range(1, len(w) + 1)) AS i FROM words WHERE len(w) > 0),
        grams AS (
            SELECT scope, log_id, kind, array_to_string(w[i:i + n - 1], ' ') AS phrase
            FROM starts, range(1, {MAX_PHRASE_WORDS + 1}) t(n) WHERE i + n - 1 <= len(w))
        SELECT scope AS key, kind, phrase AS item, count(DISTINCT log_id) AS count FROM grams GROUP BY ALL""",
    "tone": " UNION ALL ".join(
        f"""SELECT scope AS key, '{marker}' AS item, count(*) AS count,
                   sum(len(regexp_extract_all(lower(output), {literal(rx)}))) AS output_sum,
                   sum(len(regexp_extract_all(lower(final_text), {literal(rx)}))) AS final_sum
            FROM edits WHERE output IS NOT NULL AND final_text IS NOT NULL GROUP BY ALL"""
        for marker, (rx, _) in TONE_MARKERS.items()
    ),
    # per task and attempt: the counts and sums that give by-attempt rates and the regression slopes
    "attempts": f"""SELECT task AS key, coalesce(attempt, 1) AS attempt, {_DECISIONS},
                           sum(quality_score) AS quality_sum, count(quality_score) AS quality_n
                    FROM base GROUP BY ALL""",
    "experiments": f"""SELECT experiment_id AS key, variant AS item, {_DECISIONS}
                       FROM base WHERE experiment_id IS NOT NULL AND variant IS NOT NULL GROUP BY ALL""",
}
# The large sections, each combined into a table of its own columns (`agg_<section>`); the rest share table `agg`.
NARROW = {
    "groups": (
        "day",
        "dimension",
        "key",
        "count",
        "n",
        "accepted",
        "edited",
        "rejected",
        "retained_sum",
        "retained_n",
        "quality_sum",
        "quality_n",
        "confidence_sum",
        "confidence_n",
        "cost_sum",
    ),
    "latency": ("day", "dimension", "key", "value", "count"),
    "ngrams": ("key", "kind", "item", "count"),
}
# The tables of `combine` that are views over the files: a report reads each of these large sections in a query or three
# that touch only its row groups, which costs less than copying them first.
VIEWS = tuple(f"agg_{section}" for section in NARROW)
# What identifies a row of the aggregates; every other column adds up.
KEYS = ("section", "day", "dimension", "key", "item", "kind", "attempt", "value")
SCHEMA = pa.schema(
    [
        (name, {"VARCHAR": pa.string(), "DATE": pa.date32(), "BIGINT": pa.int64(), "DOUBLE": pa.float64()}[kind])
        for name, kind in COLUMNS.items()
    ]
)


@dataclass
class DayAggregates:
    """What aggregating one day wrote."""

    date: str
    path: Path
    records: int
    settled: int
    rows: dict[str, int]


def aggregates_path(lake_dir: Path, date: str) -> Path:
    """The parquet file of one day's aggregates."""
    return partition_file(lake_dir, TABLE, date)


def is_stale(lake_dir: Path, date: str) -> bool:
    """Whether a day's aggregates are missing or older than a lake file they were computed from."""
    built, *sources = (partition_stamp(lake_dir, table, date) for table in (TABLE, *SOURCES))
    return _stale(built, sources)


def _stale(built: list[int] | None, sources: list[list[int] | None]) -> bool:
    """Whether aggregates stamped `built` are missing or older than a source file stamped in `sources`."""
    return built is None or any(s is not None and s[0] > built[0] for s in sources)


def table_view(con: duckdb.DuckDBPyConnection, name: str, files: list[Path], columns: dict[str, str]) -> None:
    """A view over parquet `files` with exactly `columns` (NULL where a file lacks one; no rows without files)."""
    if files:
        paths = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        source = f"read_parquet([{paths}], union_by_name = true, hive_partitioning = false)"
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    else:
        source, present = "(SELECT 1) WHERE false", set()
    select = ", ".join(f'"{col}"' if col in present else f'NULL::{kind} AS "{col}"' for col, kind in columns.items())
    con.execute(f"CREATE TEMP VIEW {name} AS SELECT {select} FROM {source}")


def day_aggregates(lake_dir: Path, date: str) -> pa.Table:
    """Every section of one day's aggregates as one table of SCHEMA (no rows for a day without data)."""
    checked_date(date)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        from ft_pipeline.core.feedback import create_joined_view  # it quotes with `literal`, from here

        for view, table, columns in (("calls", "raw_logs", RAW_COLUMNS), ("settled", "settlements", SETTLED_COLUMNS)):
            source = partition_file(lake_dir, table, date)
            table_view(con, view, [source] if source.is_file() else [], columns)
        create_joined_view(con, "raw", "calls", lake_dir)
        con.execute("""
            CREATE TEMP VIEW base AS
            SELECT r.*, s.retained, r.decision IN ('accepted', 'edited', 'rejected') AS reviewed,
                   CAST(r.timestamp AS DATE) AS day
            FROM raw r LEFT JOIN settled s USING (log_id)""")
        con.execute("""
            CREATE TEMP VIEW edits AS
            SELECT log_id, coalesce(agent, task) AS scope, output, final_text, deleted_spans, added_spans
            FROM settled WHERE decision = 'edited' AND coalesce(agent, task) IS NOT NULL""")
        _key_map(con)
        union = " UNION ALL BY NAME ".join(
            f"SELECT '{section}' AS section, * FROM ({query})" for section, query in SECTIONS.items()
        )
        select = ", ".join(f'CAST("{col}" AS {kind}) AS "{col}"' for col, kind in COLUMNS.items())
        return con.sql(f"SELECT {select} FROM ({union})").to_arrow_table().cast(SCHEMA)
    finally:
        con.close()


def _key_map(con: duckdb.DuckDBPyConnection) -> None:
    """View `long`: one row per record and dimension it has a value in, with the value's redacted report key, so
    no PII (a user_id that is an email, say) becomes a report key."""
    rows = []
    for dim in DIMENSIONS:
        for (value,) in con.execute(f'SELECT DISTINCT CAST("{dim}" AS VARCHAR) FROM raw WHERE "{dim}" IS NOT NULL').fetchall():
            rows.append({"dimension": dim, "value": value, "key": redact(value)[0]})
    keymap = pa.Table.from_pylist(
        rows, schema=pa.schema([("dimension", pa.string()), ("value", pa.string()), ("key", pa.string())])
    )
    con.register("keymap_arrow", keymap)
    con.execute("CREATE TEMP TABLE keymap AS SELECT * FROM keymap_arrow")
    con.unregister("keymap_arrow")
    union = " UNION ALL ".join(
        f'SELECT \'{d}\' AS dimension, CAST("{d}" AS VARCHAR) AS value, * FROM base WHERE "{d}" IS NOT NULL' for d in DIMENSIONS
    )
    con.execute(f"CREATE TEMP VIEW long AS SELECT k.key, l.* FROM ({union}) l JOIN keymap k USING (dimension, value)")


def write_day(lake_dir: Path, date: str) -> DayAggregates:
    """Aggregate one day and write its partition atomically (an empty but valid file for a day without data)."""
    table = _redacted(day_aggregates(lake_dir, date), ("key", "item"))
    path = write_parquet_atomic(table, aggregates_path(lake_dir, date))
    by_section = {
        row["section"]: row for row in table.group_by("section").aggregate([("count", "sum"), ("section", "count")]).to_pylist()
    }
    rows = {s: by_section.get(s, {}).get("section_count", 0) for s in SECTIONS}
    records, settled = (by_section.get(s, {}).get("count_sum") or 0 for s in ("totals", "settled"))
    return DayAggregates(date, path, records, settled, rows)


def _redacted(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """`table` with PII redacted in its text columns: the lake holds no raw reason, scope or experiment name.

    Redaction is idempotent, so keys redacted before (groups) stay as they are; it runs once per distinct value.
    """
    for name in columns:
        column = table[name]
        distinct = pc.unique(column).drop_null()
        cleaned = pa.array([redact(value)[0] for value in distinct.to_pylist()], pa.string())
        if cleaned.equals(distinct.cast(pa.string())):
            continue
        mapped = pc.take(cleaned, pc.index_in(column, value_set=distinct))
        table = table.set_column(table.schema.get_field_index(name), name, mapped)
    return table


def refresh(lake_dir: Path) -> tuple[list[str], list[DayAggregates]]:
    """Every day with lake data, and the aggregates written for the days whose aggregates were missing or stale."""
    built, *sources = (partition_stamps(lake_dir, table) for table in (TABLE, *SOURCES))
    dates = sorted(set().union(*sources))
    return dates, [write_day(lake_dir, d) for d in dates if _stale(built.get(d), [s.get(d) for s in sources])]


def rollup_dir(lake_dir: Path) -> Path:
    """The folder of the ROLLUPS."""
    return Path(lake_dir) / TABLE / "rollup"


def rollup_path(lake_dir: Path, name: str) -> Path:
    """One of the ROLLUPS: the days folded into it added up, with the days it holds, so a report reads it and the rest."""
    return rollup_dir(lake_dir) / f"{name}.parquet"


def _unheld(stamps: dict[str, list[int]], held: dict[str, dict[str, list[int]]]) -> list[str]:
    """The days of `stamps` in none of the rollups of `held`."""
    return [d for d in stamps if not any(d in days for days in held.values())]


def _held(path: Path, expected: pa.Schema = SCHEMA) -> dict[str, list[int]]:
    """The days a rollup (or the phrase totals) holds, with their files' stamps, from its footer; none when it is
    missing or unusable."""
    if not path.is_file():
        return {}
    schema = pq.read_schema(path)
    held = json.loads((schema.metadata or {}).get(ROLLUP_META, b"null"))
    if not isinstance(held, dict) or schema.remove_metadata() != expected:
        return {}
    return held.get("days", {})


def _bucketed(value: str) -> str:
    """SQL: the representative of the logarithmic bucket of positive `value` (the value itself otherwise)."""
    gamma = (1 + LATENCY_ACCURACY) / (1 - LATENCY_ACCURACY)
    return f"CASE WHEN {value} > 0 THEN 2 * pow({gamma}, ceil(ln({value}) / ln({gamma}))) / ({gamma} + 1) ELSE {value} END"


def combine(con: duckdb.DuckDBPyConnection, lake_dir: Path, dates: list[str]) -> dict[str, dict]:
    """Tables `agg` and `agg_<section>` (NARROW; views for those in VIEWS) in `con`: the aggregates of `dates` added up,
    from the ROLLUPS plus the files of the days they do not hold. Once FOLD_DAYS days are in neither, they are folded
    in, so a report reads the rollups and fewer than FOLD_DAYS files, and the rollups are rewritten once in FOLD_DAYS
    days. Returns what the tables were made of: the days each rollup holds, and the stamps of the other days' files."""
    built = partition_stamps(lake_dir, TABLE)
    stamps = {d: built[d] for d in dates if d in built}
    held = {name: _held(rollup_path(lake_dir, name)) for name in ROLLUPS}
    # a rollup holding a day that was rewritten or removed is not read: its days are read from their own files again
    held = {name: days if all(stamps.get(d) == stamp for d, stamp in days.items()) else {} for name, days in held.items()}
    _load(con, lake_dir, stamps, held)
    newest = con.execute("SELECT max(day) FROM agg WHERE section = 'totals'").fetchall()[0][0]
    if newest is None:
        return _made_of(stamps, held)
    cut = newest - timedelta(days=HORIZON_DAYS)
    if max(held["old"], default="") > cut.isoformat():
        # the newest day moved back, so the old rollup's days are not all before the windows any more: they are read
        # from their own files again
        held["old"] = {}
        _load(con, lake_dir, stamps, held)
    if len(_unheld(stamps, held)) < FOLD_DAYS:
        return _made_of(stamps, held)
    # the recent rollup is written first: a crash before the old one leaves days in neither (read from their files),
    # never in both
    recent = {d: stamp for d, stamp in stamps.items() if d > cut.isoformat()}
    _fold(con, rollup_path(lake_dir, "recent"), rows_sql(lake_dir, {}, list(recent)), recent, cut)
    held["recent"] = recent
    old = {d: stamp for d, stamp in stamps.items() if d <= cut.isoformat() and d not in held["old"]}
    if old:
        sources = rows_sql(lake_dir, {"old": held["old"]}, list(old))
        held["old"] = {**held["old"], **old}
        # its rows add up as its newest day's, so it stays before the windows as long as that day does
        _fold(con, rollup_path(lake_dir, "old"), sources, held["old"], date.fromisoformat(max(held["old"])))
    elif not held["old"]:
        rollup_path(lake_dir, "old").unlink(missing_ok=True)
    # what no rollup is (the single rollup of earlier versions) would double a day for a reader of every parquet file
    for stale in rollup_dir(lake_dir).glob("*.parquet"):
        if stale.stem not in (*ROLLUPS, PHRASES):
            stale.unlink()
    # the report reads what the next one will, so its numbers do not depend on when the rollups were rewritten
    _load(con, lake_dir, stamps, held)
    return _made_of(stamps, held)


def _made_of(stamps: dict[str, list[int]], held: dict[str, dict[str, list[int]]]) -> dict[str, dict]:
    """What `combine`'s tables are made of: the days each rollup holds, and the stamps of the files of the other days."""
    return {"rollups": held, "days": {d: stamps[d] for d in _unheld(stamps, held)}}


def rows_sql(lake_dir: Path, held: dict[str, dict[str, list[int]]], days: list[str]) -> str:
    """SQL: the rows of every column of the rollups in `held` that hold days and of the files of `days`."""
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    typed = ", ".join(f'NULL::{kind} AS "{c}"' for c, kind in COLUMNS.items())
    # no rows, but every column's type, so the tables exist without any file
    sources = [f"SELECT {typed} WHERE false"]
    paths = [literal(str(rollup_path(lake_dir, name))) for name, held_days in held.items() if held_days]
    paths += [literal(str(aggregates_path(lake_dir, d))) for d in sorted(days)]
    if paths:
        sources.append(f"SELECT {columns} FROM read_parquet([{', '.join(paths)}], hive_partitioning = false)")
    return " UNION ALL ".join(sources)


def _sum_phrases(con: duckdb.DuckDBPyConnection, lake_dir: Path, held: dict[str, dict[str, list[int]]]) -> None:
    """Rewrite the phrase totals from the rollups holding `held` unless they hold those days already (written after the
    rollups, so a crash leaves them holding other days, and they are rewritten then)."""
    path = rollup_path(lake_dir, PHRASES)
    days = {d: stamp for held_days in held.values() for d, stamp in held_days.items()}
    if _held(path, PHRASES_SCHEMA) == days:
        return
    if not days:
        path.unlink(missing_ok=True)
        return
    totals = pivot(f"SELECT * FROM ({rows_sql(lake_dir, held, [])}) WHERE section = 'ngrams'")
    table = con.sql(f"{totals} ORDER BY key, item").to_arrow_table().cast(PHRASES_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata({ROLLUP_META: json.dumps({"days": days})}), tmp, compression="zstd")


def pivot(ngrams: str) -> str:
    """SQL: the n-gram rows of SQL `ngrams` added up per scope and phrase, deleted and added side by side."""
    return f"""SELECT key, item, CAST(coalesce(sum(count) FILTER (WHERE kind = 'deleted'), 0) AS BIGINT) AS deleted,
                      CAST(coalesce(sum(count) FILTER (WHERE kind = 'added'), 0) AS BIGINT) AS added
               FROM ({ngrams}) GROUP BY ALL"""


def _load(
    con: duckdb.DuckDBPyConnection, lake_dir: Path, stamps: dict[str, list[int]], held: dict[str, dict[str, list[int]]]
) -> None:
    """Tables `agg` and `agg_<section>` (views for those in VIEWS) in `con` from the rollups holding `held` and the files
    of the other days of `stamps`, but for the n-grams: view `agg_ngrams` has the other days' only, and view `agg_phrases`
    the phrase totals of the rollups' days (written first when they hold other days)."""
    _sum_phrases(con, lake_dir, held)
    tables: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        f"agg_{section}": ((section,), columns) for section, columns in NARROW.items()
    }
    tables["agg"] = (tuple(s for s in SECTIONS if s not in NARROW), tuple(COLUMNS))
    unheld = _unheld(stamps, held)
    for table, (sections, columns) in tables.items():
        select = ", ".join(f'"{c}"' for c in columns)
        rows = rows_sql(lake_dir, {} if table == "agg_ngrams" else held, unheld)
        kind = "VIEW" if table in VIEWS else "TABLE"
        con.execute(
            f"CREATE OR REPLACE TEMP {kind} {table} AS SELECT {select} FROM ({rows}) "
            f"WHERE section IN ({', '.join(map(literal, sections))})"
        )
    if any(held.values()):
        phrases = f"SELECT * FROM read_parquet({literal(str(rollup_path(lake_dir, PHRASES)))})"
    else:
        phrases = "SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS item, NULL::BIGINT AS deleted, NULL::BIGINT AS added WHERE false"
    con.execute(f"CREATE OR REPLACE TEMP VIEW agg_phrases AS {phrases}")


def _fold(con: duckdb.DuckDBPyConnection, path: Path, sources: str, held: dict[str, list[int]], until: date) -> None:
    """Write the rollup `path`, holding days `held`, from the rows of SQL `sources` added up: rows dated `until` or
    earlier as one day `until`, undated rows as one, later rows day by day; latency values of a group past
    LATENCY_EXACT_VALUES distinct ones up to `until` become buckets."""
    con.execute(f"CREATE TEMP TABLE folding AS {sources}")
    day = f"DATE '{until.isoformat()}'"
    sums = ", ".join(f'CAST(sum("{c}") AS {kind}) AS "{c}"' for c, kind in COLUMNS.items() if c not in KEYS)
    keys = ", ".join(f"{day} AS day" if k == "day" else f'"{k}"' for k in KEYS)
    con.execute(f"""
        CREATE TEMP TABLE large AS
        SELECT dimension, key FROM folding WHERE section = 'latency' AND day <= {day}
        GROUP BY ALL HAVING count(DISTINCT value) > {LATENCY_EXACT_VALUES}""")
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    rollup = con.sql(f"""
        SELECT {columns} FROM (
        SELECT * FROM folding WHERE day > {day}
        UNION ALL BY NAME
        SELECT {keys}, {sums} FROM (
            SELECT f.* REPLACE (CASE WHEN l.key IS NULL THEN f.value ELSE {_bucketed("f.value")} END AS value)
            FROM folding f LEFT JOIN large l ON f.section = 'latency' AND f.dimension = l.dimension AND f.key = l.key
            WHERE f.day <= {day}) GROUP BY ALL
        UNION ALL BY NAME
        SELECT {", ".join(f'"{k}"' for k in KEYS)}, {sums} FROM folding WHERE day IS NULL GROUP BY ALL)
        ORDER BY section, dimension, key, item, kind, value""")
    table = rollup.to_arrow_table().cast(SCHEMA)
    # a row group per section: each table `_load` makes reads only its sections' (DuckDB skips the others by their
    # statistics)
    with (
        atomic_path(path) as tmp,
        pq.ParquetWriter(tmp, SCHEMA.with_metadata({ROLLUP_META: json.dumps({"days": held})}), compression="zstd") as writer,
    ):
        for section in SECTIONS:
            writer.write_table(table.filter(pc.equal(table["section"], section)))
    con.execute("DROP TABLE folding; DROP TABLE large")

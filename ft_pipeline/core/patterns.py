"""The pattern report: rates by dimension over time, regressions, edit patterns, tone shifts, retries,
failure reasons, A/B experiments, alerts and recommendations, combined with DuckDB from the daily aggregates."""

from __future__ import annotations

import gc
import heapq
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ft_pipeline.core import aggregates
from ft_pipeline.core.aggregates import TONE_MARKERS, WINDOWS
from ft_pipeline.core.io import RawJson, atomic_path, remove_stale_temps, write_large_json_atomic, write_text_atomic
from ft_pipeline.core.locks import hold
from ft_pipeline.core.redaction import redact
from ft_pipeline.core.stats import compare_arms, rate, two_proportion_test
from ft_pipeline.settings import Settings

# The bands of a daily row by its days back from the newest record's day: under each window's length in turn (the
# last 7 days, then days 7-29, 30-89), older, and undated; a row is in one band, so a group's sums per band, added up,
# give every span's.
BOUNDS = sorted(WINDOWS.values())
UNDATED = len(BOUNDS) + 1
BANDS = UNDATED + 1
# Suffix of each set of group aggregates, with its bands: the whole history, each window, and the days before the last
# 7, which regressions and alerts compare with the 7-day window.
SPANS = {
    "": tuple(range(BANDS)),
    **{f"_{w}": tuple(range(BOUNDS.index(d) + 1)) for w, d in WINDOWS.items()},
    "_before": tuple(range(BOUNDS.index(WINDOWS["7d"]) + 1, UNDATED)),
}
# The spans of a group's entry in the report (the whole history and each window), the ones with latency percentiles;
# the days before the last 7 are compared by their rates and means only.
ENTRY_SPANS = ("", *(f"_{w}" for w in WINDOWS))
# The columns of the groups that their rate blocks of a span are made of, in `_summaries`' order.
SUMMARY_FIELDS: tuple[str, ...] = (
    "n",
    "acceptance_rate",
    "edit_rate",
    "rejection_rate",
    "mean_retained",
    "mean_quality",
    "mean_confidence",
    "latency_ms_p50",
    "latency_ms_p95",
    "cost_usd",
)
# The rates of a span's rate block, each of the reviewed records (n) with a decision.
SPAN_RATES = {"acceptance_rate": "accepted", "edit_rate": "edited", "rejection_rate": "rejected"}
# The means of a span's rate block, each from its summed total and count; with the counts and the cost, the daily sums
# a span adds up (`costed`: whether a day had a cost, so a span without one has none).
SPAN_MEANS = {
    "mean_retained": ("retained_sum", "retained_n"),
    "mean_quality": ("quality_sum", "quality_n"),
    "mean_confidence": ("confidence_sum", "confidence_n"),
}
SPAN_SUMS = ("n", "accepted", "edited", "rejected", *(c for pair in SPAN_MEANS.values() for c in pair), "cost_sum", "costed")
# The columns of the groups the regressions test (the accepted and reviewed records on both sides of the 7-day line),
# and those the alerts do.
REGRESSION_FIELDS = ("accepted_before", "n_before", "accepted_7d", "n_7d")
ALERT_FIELDS = ("rejection_rate_7d", "latency_ms_p95_7d", "mean_confidence_before", "mean_confidence_7d")
# The listed groups' columns of the last report, in an Arrow IPC file beside the rollups with the state it was combined
# in (JSON in its schema's metadata): a report computes the groups whose rows changed since, and takes the others' from
# it. Each group's records tell a group that lost rows; its reviewed records rank it in the Markdown; its member_at is
# the row of its member among the member files the state lists, in their order.
GROUPS_FILE = "groups.arrow"
GROUPS_META = b"ft_pipeline_groups"
# Raised when what a group's columns mean changes without a change of GROUPS_SCHEMA, so no report takes older ones.
GROUPS_VERSION = 1
KEY_FIELDS = ["dimension", "key", "records"]
GROUPS_SCHEMA = pa.schema(
    [("dimension", pa.string()), ("key", pa.string()), ("records", pa.int64()), ("n", pa.int64())]
    + [(name, pa.int64()) for name in REGRESSION_FIELDS]
    + [(name, pa.float64()) for name in ALERT_FIELDS]
    + [("member_at", pa.int64())]
)
# A group's member is its key and entry as the report's JSON holds them, and the comma after them: a report serializes
# only the groups it computed (a year of users is millions of numbers to format), and writes a dimension's members
# from the buffer that holds them in a row. They are kept in Arrow IPC files beside GROUPS_FILE: a report writes those
# it computed in a new file and points at the others where they are, and writes the listed ones in one file again only
# when the files hold more than MEMBERS_SLACK times as many (the older members of groups computed again), so a new day
# writes the day's members, not a year's.
MEMBERS_FILE = re.compile(r"members-[0-9a-f]{32}\.arrow")
MEMBERS_SCHEMA = pa.schema([("member", pa.large_binary())])
MEMBERS_SLACK = 2
# A phrase is folded into a longer one that contains it when the longer one has this share of its support.
MERGE_SHARE = 0.8
# Phrases of one agent and kind the folding considers, the best supported first: a report lists ten or so.
PHRASE_CANDIDATES = 1000
# A phrase counts as deleted (added) only when more than this many times as many edits delete (add) it as add
# (delete) it.
CHURN_RATIO = 2
# Phrases made only of these words, or of numbers, say nothing about what editors fix.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "from",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "my",
        "your",
        "our",
        "their",
        "as",
        "so",
        "if",
        "then",
        "than",
        "not",
        "no",
        "do",
        "does",
        "did",
    ]
)
# A word of an edit span (lower-cased); redaction placeholders such as [email] stay one word.
# and absolute change of answer length, mean change per answer of a tone marker.
RECOMMEND_PHRASE_RATE = 0.3
RECOMMEND_LENGTH_SHARE = 0.2
RECOMMEND_LENGTH_WORDS = 3
RECOMMEND_MARKER_DELTA = 0.5


def build_report(settings: Settings) -> dict[str, Any]:
    """The whole pattern report, combined from the daily aggregates of every day with lake data; days whose
    aggregates are missing or older than their lake files are aggregated first."""
    # one report at a time: another's fold rewrites the rollups and the day files this one reads
    with hold(settings.root, "report"), _cycle_collector_paused():
        dates, _ = aggregates.refresh(settings.lake_dir)
        con = duckdb.connect()
        try:
            made_of = aggregates.combine(con, settings.lake_dir, dates)
            return _report(con, settings, made_of)
        finally:
            con.close()


def publish_report(settings: Settings) -> tuple[dict[str, Any], str, Path]:
    """Build the pattern report and write it to the reports folder as JSON (pattern_report.json, the contract's) and
    Markdown (pattern_report.md); the report, its Markdown and the JSON's path."""
    report = build_report(settings)
    markdown = render_markdown(report, settings.report_markdown_groups)
    path = write_large_json_atomic(jsonable(report), settings.reports_dir / "pattern_report.json")
    write_text_atomic(markdown, settings.reports_dir / "pattern_report.md")
    return report, markdown, path


def jsonable(report: dict[str, Any]) -> dict[str, Any]:
    """The report as its JSON file holds it, for orjson: each dimension's groups as their members."""
    return {**report, "groups": {dimension: listed.json() for dimension, listed in report["groups"].items()}}


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused, and resumed after if it ran before: a report builds millions of acyclic
    objects (a dict per group and span), and the collector's passes over them, which free nothing, cost a fifth of the
    report of a year of 50k users."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> list[dict]:
    """Rows of a query as dicts."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _report(con: duckdb.DuckDBPyConnection, settings: Settings, made_of: dict[str, dict]) -> dict[str, Any]:
    """Assemble every section of the report from the tables of daily aggregates that `aggregates.combine` made of
    `made_of`."""
    totals = _rows(
        con,
        """
        SELECT coalesce(sum(count) FILTER (WHERE section = 'totals'), 0) AS records,
               coalesce(sum(n) FILTER (WHERE section = 'totals'), 0) AS reviewed,
               coalesce(sum(count) FILTER (WHERE section = 'settled'), 0) AS settled,
               coalesce(sum(accepted) FILTER (WHERE section = 'totals'), 0) AS accepted,
               coalesce(sum(edited) FILTER (WHERE section = 'totals'), 0) AS edited,
               coalesce(sum(rejected) FILTER (WHERE section = 'totals'), 0) AS rejected,
               coalesce(sum(pending) FILTER (WHERE section = 'totals'), 0) AS pending,
               max(day) FILTER (WHERE section = 'totals') AS as_of
        FROM agg""",
    )[0]
    as_of = totals.pop("as_of")
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "as_of": as_of.isoformat() if as_of else None,
        "totals": {k: int(v) for k, v in totals.items()},
    }
    listed = _group_columns(con, settings, made_of, as_of)
    report["groups"] = _groups(listed)
    report["groups_omitted"] = _omitted(con, settings.report_min_group_n)
    report["regressions"] = _regressions(listed, settings)
    report["alerts"] = _alerts(listed, settings)
    report["edit_patterns"] = _edit_patterns(con, settings)
    report["retries"] = _retries(con, settings)
    report["failure_reasons"] = _failure_reasons(con)
    report["experiments"] = _experiments(con, settings)
    report["recommendations"] = recommendations(report, settings)
    return report


def _band_sums(rows: dict[str, np.ndarray], groups: int) -> dict[str, np.ndarray]:
    """Each column of `rows` (a group's daily sums, with its group number `g` and band) added up per group and band, as
    an array of `groups` rows and BANDS columns."""
    cell = rows["g"] * BANDS + rows["band"]
    return {c: np.bincount(cell, weights=rows[c], minlength=groups * BANDS).reshape(groups, BANDS) for c in SPAN_SUMS}


def _nullable(values: np.ndarray, present: np.ndarray) -> pa.Array:
    """`values`, null where not `present`."""
    return pa.array(values, mask=~present)


def _mean(total: np.ndarray, count: np.ndarray) -> pa.Array:
    """Sums divided by their counts, null where there is no value."""
    has = count > 0
    return _nullable(np.divide(total, count, out=np.zeros(len(total)), where=has), has)


def _quantiles(
    first: np.ndarray, last: np.ndarray, value: np.ndarray, count: np.ndarray, qs: tuple[float, ...]
) -> list[pa.Array]:
    """quantile_cont(latency_ms, q) for each q of `qs` of each group from its value counts (rows sorted by value within
    a group, whose rows are `first` to `last` excluded; rows counted 0 are left out): the interpolation between the
    values at positions floor and ceil of (n - 1) * q. Null for a group without values."""
    upto = np.concatenate(([0], np.cumsum(count)))
    before = upto[first]
    total = upto[last] - before
    if not len(value):
        return [pa.nulls(len(first), pa.float64()) for _ in qs]
    found = []
    for q in qs:
        pos = (total.astype(np.float64) - 1) * q
        # the value at a position: the first row whose cumulative count passes it (never one counted 0)
        lo, hi = (
            value[np.minimum(np.searchsorted(upto[1:], before + np.maximum(f(pos), 0), side="right"), len(value) - 1)]
            for f in (np.floor, np.ceil)
        )
        found.append(_nullable(np.where(np.floor(pos) == np.ceil(pos), lo, lo + (pos - np.floor(pos)) * (hi - lo)), total > 0))
    return found


def _arrays(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, np.ndarray]:
    """The columns of a query as numpy arrays (through Arrow: a third faster than DuckDB's own numpy fetch for a million
    rows)."""
    table = con.sql(sql).to_arrow_table()
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _group_columns(con: duckdb.DuckDBPyConnection, settings: Settings, made_of: dict[str, dict], as_of: date | None) -> pa.Table:
    """The groups (dimension, key) with at least `report_min_group_n` reviewed records, with their members of the
    report's JSON and the columns the Markdown, the regressions and the alerts read (GROUPS_SCHEMA). Only the groups
    whose rows changed, or moved to another band, since the last report are computed; the others' columns are the last
    report's (GROUPS_FILE and its member files)."""
    directory = aggregates.rollup_dir(settings.lake_dir)
    state = {
        "version": GROUPS_VERSION,
        "min_n": int(settings.report_min_group_n),
        "windows": WINDOWS,
        "as_of": as_of and as_of.isoformat(),
        **made_of,
    }
    last = _last_groups(directory, state)
    # a group's columns depend on its rows and their bands: one with rows on a day that the newest day's move put in
    # another band is computed again
    moved = _moved_days(date.fromisoformat(last.state["as_of"]), as_of) if last and last.state["as_of"] and as_of else []
    days = ", ".join(f"DATE '{d.isoformat()}'" for d in moved)
    shifted = f"count(*) FILTER (WHERE day IN ({days})) > 0" if moved else "false"
    # the groups listed, first: the latency distributions are ranked for those only, so a long tail of groups with a
    # record or two (most users) costs a count, not a sort of its values
    con.execute(f"""
        CREATE TEMP TABLE sized AS
        SELECT dimension, key, coalesce(sum(n), 0) AS n, CAST(coalesce(sum(count), 0) AS BIGINT) AS records, {shifted} AS moved
        FROM agg_groups GROUP BY ALL""")
    con.execute(
        "CREATE TEMP TABLE listed AS SELECT dimension, key, records, moved, row_number() OVER (ORDER BY dimension, key) - 1 "
        f"AS g FROM sized WHERE n >= {int(settings.report_min_group_n)}"
    )
    keys = con.sql(f"SELECT {', '.join(KEY_FIELDS)} FROM listed ORDER BY g").to_arrow_table()
    keys = keys.cast(pa.schema([GROUPS_SCHEMA.field(name) for name in KEY_FIELDS]))
    groups = keys.num_rows
    kept = _kept(con, settings.lake_dir, made_of, last)
    con.execute(
        "CREATE TEMP TABLE todo AS SELECT dimension, key, g AS slot, row_number() OVER (ORDER BY g) - 1 AS g FROM listed "
        "WHERE g NOT IN (SELECT g FROM kept)"
    )
    todo = con.sql("SELECT slot, key FROM todo ORDER BY g").to_arrow_table()
    slots = todo["slot"].to_numpy()
    fresh = _computed(con, "todo", len(slots))
    fresh_members = _members(pa.table({"key": todo["key"], **fresh}))
    stored = last.members.chunks if last else []
    stored_rows = len(last.members) if last else 0
    fresh["member_at"] = pa.array(stored_rows + np.arange(len(slots)))
    # each listed group's row: the last report's (its row there) or a fresh one (after the last report's rows)
    source = np.empty(groups, np.int64)
    source[kept["g"]] = kept["last_row"]
    source[slots] = (last.table.num_rows if last else 0) + np.arange(len(slots))
    merged = pa.table(
        [*keys.columns, *(_merged_column(f, last, fresh[f.name], source) for f in GROUPS_SCHEMA if f.name not in KEY_FIELDS)],
        schema=GROUPS_SCHEMA,
    )
    members = pa.chunked_array([*stored, fresh_members], pa.large_binary()).take(merged["member_at"])
    files = last.state["members"] if last else []
    # the listed members in one file again once the files hold too many older ones; else the fresh ones in a new file
    if not last or stored_rows + len(slots) > MEMBERS_SLACK * groups:
        files, written = [], members
        merged = merged.set_column(merged.schema.get_field_index("member_at"), "member_at", pa.array(np.arange(groups)))
    else:
        written = fresh_members
    if len(written):
        files = [*files, _write_members(directory, written)]
    _write_groups(directory, merged, {**state, "members": files})
    return merged.drop_columns(["member_at"]).append_column("member", members)


def _merged_column(field: pa.Field, last: _LastGroups | None, fresh: pa.Array, source: np.ndarray) -> pa.ChunkedArray:
    """Column `field` of the listed groups: rows `source` of the last report's rows followed by the fresh ones."""
    chunks = last.table.column(field.name).chunks if last else []
    return pa.chunked_array([*chunks, fresh.cast(field.type)], field.type).take(source)


def _computed(con: duckdb.DuckDBPyConnection, table: str, groups: int) -> dict[str, pa.Array]:
    """The aggregates of every span of the groups of `table` (dimension, key and their number g, from 0 to `groups`),
    each column an array in the groups' order."""
    # each daily row's band
    cases = " ".join(f"WHEN days_back < {d} THEN {i}" for i, d in enumerate(BOUNDS))
    for section in ("groups", "latency"):
        con.execute(f"""
            CREATE TEMP VIEW banded_{section} AS
            SELECT *, CAST(CASE WHEN days_back IS NULL THEN {UNDATED} {cases} ELSE {len(BOUNDS)} END AS UTINYINT) AS band
            FROM (SELECT *, (SELECT max(day) FROM agg WHERE section = 'totals') - day AS days_back FROM agg_{section})""")
    # the sums are bincounts of the groups' daily rows by group and band, one per column, where DuckDB's filtered
    # aggregates (a filter per metric and span) cost several times more; a span adds up its bands
    summed = ", ".join(f"coalesce({c}, 0) AS {c}" for c in SPAN_SUMS if c != "costed")
    banded = _band_sums(
        _arrays(
            con,
            f"SELECT g, band, {summed}, cost_sum IS NOT NULL AS costed FROM banded_groups JOIN {table} USING (dimension, key)",
        ),
        groups,
    )
    columns: dict[str, pa.Array] = {}
    for suffix, bands in SPANS.items():
        sums = {c: banded[c][:, list(bands)].sum(axis=1) for c in SPAN_SUMS}
        # the counts the regressions test; the rest of a block is rates and means
        for c in ("n", "accepted"):
            columns[f"{c}{suffix}"] = pa.array(sums[c].astype(np.int64))
        for name, decided in SPAN_RATES.items():
            columns[f"{name}{suffix}"] = _mean(sums[decided], sums["n"])
        for name, (total, count) in SPAN_MEANS.items():
            columns[f"{name}{suffix}"] = _mean(sums[total], sums[count])
        columns[f"cost_usd{suffix}"] = _nullable(sums["cost_sum"], sums["costed"] > 0)
    # the value counts in the order of their groups and values give every span's quantiles, each from the rows in it
    # (the others counted 0: a million rows are zeroed faster than they are selected)
    counts = _arrays(
        con, f"SELECT g, value, count, band FROM banded_latency JOIN {table} USING (dimension, key) ORDER BY g, value"
    )
    ids = np.arange(groups)
    first, last = (np.searchsorted(counts["g"], ids, side=side) for side in ("left", "right"))
    for suffix in ENTRY_SPANS:
        kept = np.where(np.isin(np.arange(BANDS), SPANS[suffix])[counts["band"]], counts["count"], 0)
        p50, p95 = _quantiles(first, last, counts["value"], kept, (0.5, 0.95))
        columns[f"latency_ms_p50{suffix}"], columns[f"latency_ms_p95{suffix}"] = p50, p95
    return columns


@dataclass
class _LastGroups:
    """The listed groups' columns of the last report (GROUPS_SCHEMA), with the state it was combined in and the members
    of its member files, in their order."""

    table: pa.Table
    state: dict[str, Any]
    members: pa.ChunkedArray


def _mapped(path: Path) -> pa.Table:
    """The table of an Arrow IPC file, mapped, not read: a report copies only the rows it keeps (the file is replaced or
    removed, never written in place, so the mapping holds while the next one is written)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def _last_groups(directory: Path, state: dict[str, Any]) -> _LastGroups | None:
    """The last report's groups, when it listed them by the same rules from the same rollups; None otherwise, or when
    its files are missing or unreadable (then every group is computed, and the files written again)."""
    try:
        table = _mapped(directory / GROUPS_FILE)
        last = json.loads(table.schema.metadata[GROUPS_META])
        files = last["members"]
        if not isinstance(files, list) or not all(isinstance(name, str) and MEMBERS_FILE.fullmatch(name) for name in files):
            return None
        stored = [_mapped(directory / name) for name in files]
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None
    if table.schema.remove_metadata() != GROUPS_SCHEMA or not isinstance(last.get("days"), dict):
        return None
    if any(part.schema != MEMBERS_SCHEMA for part in stored) or any(
        last.get(name) != state[name] for name in ("version", "min_n", "windows", "rollups")
    ):
        return None
    members = pa.chunked_array([chunk for part in stored for chunk in part["member"].chunks], pa.large_binary())
    at = table["member_at"]
    if table.num_rows and (at.null_count or pc.min(at).as_py() < 0 or pc.max(at).as_py() >= len(members)):
        return None
    return _LastGroups(table, last, members)


def _moved_days(before: date, now: date) -> list[date]:
    """The days in another band when the newest day is `now` than when it was `before`."""
    early, late = sorted((before, now))
    return [late - timedelta(days=bound + back) for bound in BOUNDS for back in range((late - early).days)]


def _kept(
    con: duckdb.DuckDBPyConnection, lake_dir: Path, made_of: dict[str, dict], last: _LastGroups | None
) -> dict[str, np.ndarray]:
    """Table `kept`: the listed groups (g) whose columns are the last report's (its row), those whose rows are all as
    they were: none is in a day file that is new or changed since, none moved band, and their records add up as they
    did (a group that lost rows, from a removed file or a changed one that no longer has it, has fewer)."""
    if last is None:
        con.execute("CREATE TEMP TABLE kept (g BIGINT, last_row BIGINT)")
        return _arrays(con, "SELECT g, last_row FROM kept")
    changed = [d for d, stamp in made_of["days"].items() if last.state["days"].get(d) != stamp]
    con.execute(
        "CREATE TEMP TABLE changed AS SELECT DISTINCT dimension, key "
        f"FROM ({aggregates.rows_sql(lake_dir, {}, changed)}) WHERE section = 'groups'"
    )
    previous = last.table.select(KEY_FIELDS).append_column("last_row", pa.array(np.arange(last.table.num_rows)))
    con.register("previous", previous)
    con.execute("""
        CREATE TEMP TABLE kept AS
        SELECT l.g, p.last_row FROM listed l JOIN previous p USING (dimension, key)
        WHERE l.records = p.records AND NOT l.moved AND NOT EXISTS (SELECT 1 FROM changed c WHERE c.dimension = l.dimension AND c.key = l.key)""")
    con.unregister("previous")
    return _arrays(con, "SELECT g, last_row FROM kept")


def _write_members(directory: Path, members: pa.Array | pa.ChunkedArray) -> str:
    """Write `members` in a new member file in `directory`; its name."""
    name = f"members-{uuid.uuid4().hex}.arrow"
    _write_arrow(directory / name, pa.table([members], schema=MEMBERS_SCHEMA))
    return name


def _write_groups(directory: Path, table: pa.Table, state: dict[str, Any]) -> None:
    """Write the listed groups' columns with the state they were combined in, for the next report, and remove the member
    files it does not list."""
    path = directory / GROUPS_FILE
    remove_stale_temps(path)  # a killed report's; the report lock keeps every other writer out
    _write_arrow(path, table.replace_schema_metadata({GROUPS_META: json.dumps(state)}))
    # after the file that stops listing them, so a crash leaves files unlisted, never a listed one missing
    for stale in [*directory.glob("members-*.arrow"), *directory.glob(".members-*.tmp")]:
        if stale.name not in state["members"]:
            stale.unlink(missing_ok=True)


def _write_arrow(path: Path, table: pa.Table) -> None:
    """Write `table` to `path` as an Arrow IPC file, atomically."""
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _omitted(con: duckdb.DuckDBPyConnection, min_n: int) -> dict[str, int]:
    """Per dimension, the groups left out of `groups` for too few reviewed records."""
    return dict(
        con.execute(f"SELECT dimension, count(key) FROM sized WHERE n < {int(min_n)} GROUP BY ALL ORDER BY dimension").fetchall()
    )


def _summaries(columns: dict[str, list], suffix: str) -> list[dict]:
    """The contract's rate block of every group for one span."""
    return [
        {
            "n": n,
            "acceptance_rate": acceptance,
            "edit_rate": edit,
            "rejection_rate": rejection,
            "mean_retained": retained,
            "mean_quality": quality,
            "mean_confidence": confidence,
            "latency_ms_p50": p50,
            "latency_ms_p95": p95,
            "cost_usd": cost,
        }
        for n, acceptance, edit, rejection, retained, quality, confidence, p50, p95, cost in zip(
            *(columns[f"{c}{suffix}"] for c in SUMMARY_FIELDS)
        )
    ]


def _members(table: pa.Table) -> pa.Array:
    """Each group's member of its dimension's object in the report's JSON, from its columns: its key, and its entry (the
    rates of the whole history, with those of each window), and a comma."""
    names = [f"{c}{suffix}" for suffix in ENTRY_SPANS for c in SUMMARY_FIELDS]
    columns = {name: table.column(name).to_pylist() for name in names}
    windows = {w: _summaries(columns, f"_{w}") for w in WINDOWS}
    members = []
    for i, (key, entry) in enumerate(zip(table.column("key").to_pylist(), _summaries(columns, ""))):
        entry["windows"] = {w: blocks[i] for w, blocks in windows.items()}
        members.append(orjson.dumps({key: entry})[1:-1] + b",")  # a one-member object without its braces, and a comma
    return pa.array(members, pa.large_binary())


class ListedGroups(Mapping[str, dict[str, Any]]):
    """The listed groups of one dimension, in the order of their keys: each entry kept as its member of the report's
    JSON, which the report's file takes as it is, and decoded when it is read."""

    def __init__(self, keys: list[str], members: pa.ChunkedArray, reviewed: np.ndarray) -> None:
        self._keys, self._members, self._reviewed = keys, members, reviewed
        self._index = {key: i for i, key in enumerate(keys)}

    def __getitem__(self, key: str) -> dict[str, Any]:
        return orjson.loads(b"{" + self._members[self._index[key]].as_py()[:-1] + b"}")[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def most_reviewed(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        """The `count` groups with the most reviewed records (the first key among equals), with their entries."""
        return [(self._keys[i], self[self._keys[i]]) for i in np.argsort(-self._reviewed, kind="stable")[:count]]

    def json(self) -> RawJson:
        """The dimension's object in the report's JSON, from the buffers that hold its members."""
        parts = []
        for chunk in self._members.chunks:
            if len(chunk):
                _, offsets, data = chunk.buffers()
                start, end = np.frombuffer(offsets, np.int64)[[chunk.offset, chunk.offset + len(chunk)]]
                parts.append(memoryview(data)[start:end])
        if not parts:
            return RawJson(b"{}")
        parts[-1] = parts[-1][:-1]  # the last member's comma
        return RawJson(b"{", *parts, b"}")


def _groups(table: pa.Table) -> dict[str, ListedGroups]:
    """`groups` section of the listed groups' columns (in the order of their dimensions and keys, with their members):
    {dimension: its groups}."""
    groups = {}
    start = 0
    for counted in pc.value_counts(table["dimension"]).to_pylist():
        rows = table.slice(start, counted["counts"])
        groups[counted["values"]] = ListedGroups(rows["key"].to_pylist(), rows["member"], rows["n"].to_numpy())
        start += counted["counts"]
    return groups


def _regressions(table: pa.Table, settings: Settings) -> list[dict]:
    """Groups (of the listed groups' columns) whose acceptance rate in the last 7 days fell by more than the threshold,
    significantly."""
    found = []
    names = ["dimension", "key", *REGRESSION_FIELDS]
    # The z-test's normal approximation is meaningless for a handful of records (one user's bad day); the filter leaves
    # out the tens of thousands of users of a year with a few records each before any of them is a Python object.
    enough = pc.and_(*(pc.greater_equal(table[c], settings.regression_min_n) for c in ("n_before", "n_7d")))
    columns = table.filter(enough).select(names).to_pydict()
    for dimension, key, x1, n1, x2, n2 in zip(*(columns[c] for c in names)):
        before, after = x1 / n1, x2 / n2
        _, p_value = two_proportion_test(x1, n1, x2, n2)
        if before - after > settings.regression_min_drop and p_value < settings.significance:
            found.append(
                {
                    "dimension": dimension,
                    "key": key,
                    "metric": "acceptance_rate",
                    "before": before,
                    "after": after,
                    "n_before": n1,
                    "n_after": n2,
                    "p_value": p_value,
                }
            )
    return found


def _alerts(table: pa.Table, settings: Settings) -> dict[str, list[dict]]:
    """Tasks and agents (of the listed groups' columns) over the alert thresholds in the last 7 days: rejection rate,
    latency p95, confidence drop."""
    alerts: dict[str, list[dict]] = {"rejection_rate": [], "latency_p95": [], "confidence_drop": []}
    names = ["dimension", "key", *ALERT_FIELDS]
    columns = table.filter(pc.is_in(table["dimension"], pa.array(["task", "agent"]))).select(names).to_pydict()
    for dimension, key, rejection, p95, before, after in zip(*(columns[c] for c in names)):
        where = {"dimension": dimension, "key": key}
        if rejection is not None and rejection > settings.alert_rejection_rate:
            alerts["rejection_rate"].append({**where, "value": rejection, "threshold": settings.alert_rejection_rate})
        if p95 is not None and p95 > settings.alert_latency_p95_ms:
            alerts["latency_p95"].append({**where, "value": p95, "threshold": settings.alert_latency_p95_ms})
        if before is not None and after is not None and before - after > settings.alert_confidence_drop:
            alerts["confidence_drop"].append(
                {**where, "value": before - after, "before": before, "after": after, "threshold": settings.alert_confidence_drop}
            )
    return alerts


def _edit_patterns(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict:
    """Per agent (task when a record has no agent): phrases editors delete and add, and tone shifts."""
    edited = dict(con.execute("SELECT key, sum(count) FROM agg WHERE section = 'edited' GROUP BY key").fetchall())
    # Words editors delete and add alike (numbers, reworded terms) are churn, not a habit of the model: a phrase counts
    # one way when its support passes CHURN_RATIO times its supported count the other way. Only the PHRASE_CANDIDATES
    # best supported of each scope and kind leave the database; the PHRASE_CANDIDATES-th count of each, found without a
    # sort, leaves only the phrases at or above it to be ranked.
    counts = _rows(
        con,
        f"""
        WITH pairs AS (
            SELECT key AS scope, item AS phrase, coalesce(p.deleted, 0) + coalesce(u.deleted, 0) AS deleted,
                   coalesce(p.added, 0) + coalesce(u.added, 0) AS added
            FROM agg_phrases p FULL JOIN ({aggregates.pivot("SELECT * FROM agg_ngrams")}) u USING (key, item)),
        supported AS (
            SELECT scope, phrase, CASE WHEN deleted >= $support THEN deleted ELSE 0 END AS deleted,
                   CASE WHEN added >= $support THEN added ELSE 0 END AS added
            FROM pairs),
        one_way AS (
            SELECT scope, 'deleted' AS kind, phrase, deleted AS count FROM supported WHERE deleted > {CHURN_RATIO} * added
            UNION ALL
            SELECT scope, 'added' AS kind, phrase, added AS count FROM supported WHERE added > {CHURN_RATIO} * deleted),
        floors AS (SELECT scope, kind, list_min(max(count, {PHRASE_CANDIDATES})) AS floor FROM one_way GROUP BY ALL)
        SELECT scope, kind, phrase, count FROM one_way JOIN floors USING (scope, kind) WHERE count >= floor
        QUALIFY row_number() OVER (PARTITION BY scope, kind ORDER BY count DESC, phrase) <= {PHRASE_CANDIDATES}""",
        {"support": settings.min_phrase_support},
    )
    one_way: dict[tuple[str, str], dict[str, int]] = {}
    for row in counts:
        one_way.setdefault((row["scope"], row["kind"]), {})[row["phrase"]] = int(row["count"])
    tone = _tone_shifts(con)
    patterns = {}
    for scope, n_edited in sorted(edited.items()):
        key = redact(scope)[0]
        patterns[key] = {"edited": int(n_edited), "tone_shifts": tone.get(scope, [])}
        for kind in ("deleted", "added"):
            phrases = longest_phrases(one_way.get((scope, kind), {}))[: settings.report_top_phrases]
            patterns[key][kind] = [{"text": p, "count": c, "rate": c / n_edited} for p, c in phrases]
    return patterns


def longest_phrases(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Phrases with their edit counts, each sub-phrase folded into a longer phrase that carries its support
    and incidental extensions of a listed phrase left out; sorted by count, then length. Of many phrases only the
    PHRASE_CANDIDATES best supported are considered."""
    if len(counts) > PHRASE_CANDIDATES:
        # a long history of varied edits gives many phrases just over the support; the few that are listed, and the
        # longer ones that absorb them (as well supported, within MERGE_SHARE), are among the best supported
        best = set(heapq.nsmallest(PHRASE_CANDIDATES, counts, key=lambda p: (-counts[p], p)))
        counts = {p: c for p, c in counts.items() if p in best}
    subs = {phrase: _sub_phrases(phrase) for phrase in counts}
    absorbed = {
        sub for phrase, count in counts.items() for sub in subs[phrase] if sub in counts and count >= MERGE_SHARE * counts[sub]
    }
    kept = {p: c for p, c in counts.items() if p not in absorbed and not all(w in STOPWORDS or w.isdigit() for w in p.split())}
    # A phrase that extends a listed one with far less support is that phrase plus incidental context.
    listed = dict((p, c) for p, c in kept.items() if not any(sub in kept for sub in subs[p]))
    return sorted(_stitch_windows(listed).items(), key=lambda pc: (-pc[1], -len(pc[0].split()), pc[0]))


def _stitch_windows(phrases: dict[str, int]) -> dict[str, int]:
    """Join phrases that overlap in all but one word with about the same support: a phrase longer than
    MAX_PHRASE_WORDS is only counted as its overlapping windows, and people should see it whole. Each step joins
    the first such pair (a, b) in the phrases' order, the joined phrase taking the place of a new one."""
    phrases = dict(phrases)
    # why an index: over a long history the candidates number thousands, and trying every pair is quadratic
    starts: dict[tuple[str, ...], list[str]] = {}

    def index(phrase: str) -> None:
        words = tuple(phrase.split())
        for k in range(2, len(words)):
            starts.setdefault(words[:k], []).append(phrase)

    for phrase in phrases:
        index(phrase)
    while True:
        order = {p: i for i, p in enumerate(phrases)}
        pair = next(((a, b) for a in phrases if (b := _first_partner(a, phrases, starts, order))), None)
        if pair is None:
            return phrases
        a, b = pair
        count = min(phrases.pop(a), phrases.pop(b))
        joined = a + " " + " ".join(b.split()[_window_overlap(a, b) :])
        if joined not in phrases:
            index(joined)
        phrases[joined] = count


def _first_partner(
    a: str, phrases: dict[str, int], starts: dict[tuple[str, ...], list[str]], order: dict[str, int]
) -> str | None:
    """The first phrase (in `order`) that `a` overlaps as _window_overlap says, with about the same support."""
    words = a.split()
    # a longer (or as long) b starts with all but the first word of a; a shorter b of n words with a's last n - 1
    found = [b for b in starts.get(tuple(words[1:]), []) if len(b.split()) >= len(words)] if len(words) >= 3 else []
    for size in range(3, len(words)):
        found += [b for b in starts.get(tuple(words[-(size - 1) :]), []) if len(b.split()) == size]
    found = [
        b for b in found if b != a and b in phrases and min(phrases[a], phrases[b]) >= MERGE_SHARE * max(phrases[a], phrases[b])
    ]
    return min(found, key=order.__getitem__) if found else None


def _window_overlap(a: str, b: str) -> int:
    """Words that end `a` and start `b` when that is all but one word of the shorter one (two sliding windows), else 0."""
    wa, wb = a.split(), b.split()
    k = min(len(wa), len(wb)) - 1
    return k if k >= 2 and wa[-k:] == wb[:k] else 0


def _sub_phrases(phrase: str) -> list[str]:
    """Every shorter run of consecutive words of a phrase."""
    words = phrase.split()
    return [" ".join(words[start : start + size]) for size in range(1, len(words)) for start in range(len(words) - size + 1)]


def _tone_shifts(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict]]:
    """Per scope, the mean count of each tone marker in the output and in the approved text, and the delta."""
    means = {
        (row["scope"], row["marker"]): row
        for row in _rows(
            con,
            """
            SELECT key AS scope, item AS marker, sum(output_sum) / sum(count) AS mean_output,
                   sum(final_sum) / sum(count) AS mean_final
            FROM agg WHERE section = 'tone' GROUP BY ALL""",
        )
    }
    return {
        scope: [
            {
                "marker": m,
                "mean_output": means[scope, m]["mean_output"],
                "mean_final": means[scope, m]["mean_final"],
                "mean_delta": means[scope, m]["mean_final"] - means[scope, m]["mean_output"],
            }
            for m in TONE_MARKERS
        ]
        for scope in sorted({scope for scope, _ in means})
    }


def _slope(count: str, y_sum: str) -> str:
    """SQL regression slope of y on the attempt number (regr_slope) from per-attempt counts and sums of y."""
    n, sx, sy = f"sum({count})", f"sum(attempt * {count})", f"sum({y_sum})"
    sxy, sxx = f"sum(attempt * {y_sum})", f"sum(attempt * attempt * {count})"
    spread = f"({n} * {sxx} - {sx} * {sx})"
    # as regr_slope: NULL without values, NaN when every attempt number is the same
    return f"""CASE WHEN coalesce({n}, 0) = 0 THEN NULL WHEN {spread} = 0 THEN 'NaN'::DOUBLE
                    ELSE CAST({n} * {sxy} - {sx} * {sy} AS DOUBLE) / CAST({spread} AS DOUBLE) END"""


def _retries(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict:
    """Acceptance and quality by attempt number, overall and per task, and whether retrying helps."""
    by_attempt = _rows(
        con,
        """
        SELECT CASE WHEN GROUPING(key) = 1 THEN NULL ELSE key END AS task, attempt,
               CAST(sum(n) AS BIGINT) AS n, CAST(sum(accepted) AS BIGINT) AS accepted,
               sum(quality_sum) / nullif(sum(quality_n), 0) AS mean_quality
        FROM agg WHERE section = 'attempts' GROUP BY GROUPING SETS ((attempt), (key, attempt))
        ORDER BY task NULLS FIRST, attempt""",
    )
    trend = f"""
        CAST(coalesce(sum(n) FILTER (WHERE attempt = 1), 0) AS BIGINT) AS n_first,
        CAST(coalesce(sum(accepted) FILTER (WHERE attempt = 1), 0) AS BIGINT) AS accepted_first,
        CAST(coalesce(sum(n) FILTER (WHERE attempt > 1), 0) AS BIGINT) AS n_retried,
        CAST(coalesce(sum(accepted) FILTER (WHERE attempt > 1), 0) AS BIGINT) AS accepted_retried,
        {_slope("n", "accepted")} AS acceptance_slope,
        {_slope("quality_n", "quality_sum")} AS quality_slope"""
    # the overall trend exists even without records, as an aggregate over no rows does
    trends = _rows(con, f"SELECT NULL AS task, {trend} FROM agg WHERE section = 'attempts'") + _rows(
        con, f"SELECT key AS task, {trend} FROM agg WHERE section = 'attempts' GROUP BY key ORDER BY key"
    )
    sections: dict[str | None, dict] = {}
    for row in by_attempt:
        sections.setdefault(row["task"], {"by_attempt": []})["by_attempt"].append(
            {
                "attempt": row["attempt"],
                "n": row["n"],
                "acceptance_rate": rate(row["accepted"], row["n"]),
                "mean_quality": row["mean_quality"],
            }
        )
    for row in trends:
        first, retried = rate(row["accepted_first"], row["n_first"]), rate(row["accepted_retried"], row["n_retried"])
        _, p_value = two_proportion_test(row["accepted_first"], row["n_first"], row["accepted_retried"], row["n_retried"])
        sections.setdefault(row["task"], {"by_attempt": []})["trend"] = {
            "first_acceptance_rate": first,
            "retried_acceptance_rate": retried,
            "n_retried": row["n_retried"],
            "acceptance_slope": row["acceptance_slope"],
            "quality_slope": row["quality_slope"],
            "p_value": p_value if row["n_retried"] else None,
            "helps": bool(
                row["n_retried"]
                and row["n_first"]
                and retried is not None
                and first is not None
                and retried > first
                and p_value is not None
                and p_value < settings.significance
            ),
        }
    overall = sections.pop(None, {"by_attempt": []})
    return {**overall, "by_task": {redact(str(t))[0]: s for t, s in sections.items()}}


def _failure_reasons(con: duckdb.DuckDBPyConnection) -> dict:
    """How often each failure reason occurs, overall and per agent and topic (share of the group's records)."""
    rows = _rows(
        con,
        """
        WITH sized AS (
            SELECT dimension, key, sum(count) AS records FROM agg_groups
            WHERE dimension IN ('agent', 'topic') GROUP BY ALL
            UNION ALL SELECT 'overall', NULL, sum(count) FROM agg WHERE section = 'totals'),
        counted AS (SELECT dimension, key, item AS reason, sum(count) AS count FROM agg WHERE section = 'reasons' GROUP BY ALL)
        SELECT c.dimension, c.key, c.reason, CAST(s.records AS BIGINT) AS records, CAST(c.count AS BIGINT) AS count
        FROM counted c JOIN sized s ON c.dimension = s.dimension AND c.key IS NOT DISTINCT FROM s.key
        ORDER BY c.dimension, c.key, count DESC, c.reason""",
    )
    section: dict[str, Any] = {"overall": [], "agent": {}, "topic": {}}
    for row in rows:
        item = {"reason": redact(row["reason"])[0], "count": row["count"], "rate": row["count"] / row["records"]}
        if row["dimension"] == "overall":
            section["overall"].append(item)
        else:
            section[row["dimension"]].setdefault(row["key"], []).append(item)
    return section


def _experiments(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict:
    """Every experiment's arms with their acceptance rates, every pair of arms compared (Holm-corrected) and the verdict."""
    arms: dict[str, dict[str, tuple[int, int]]] = {}
    for row in _rows(
        con,
        """
        SELECT key AS experiment_id, item AS variant, CAST(sum(accepted) AS BIGINT) AS accepted, CAST(sum(n) AS BIGINT) AS n
        FROM agg WHERE section = 'experiments' GROUP BY ALL ORDER BY ALL""",
    ):
        arm = arms.setdefault(redact(row["experiment_id"])[0], {})
        name = redact(row["variant"])[0]
        x, n = arm.get(name, (0, 0))
        arm[name] = (x + row["accepted"], n + row["n"])
    return {exp: compare_arms(a, settings.significance) for exp, a in sorted(arms.items())}


def _pct(value: float) -> str:
    """A share as a whole percentage."""
    return f"{value:.0%}"


def _rate_cell(value: float | None) -> str:
    """A rate for a Markdown table cell."""
    return "-" if value is None else f"{value:.1%}"


def _number_cell(value: float | None, spec: str) -> str:
    """A number for a Markdown table cell."""
    return "-" if value is None else format(value, spec)


def recommendations(report: dict, settings: Settings) -> list[dict]:
    """Plain-language advice with its evidence, derived from the other sections of the report."""
    recs = []
    for scope, pattern in report["edit_patterns"].items():
        for kind, advice in (("deleted", "tell it not to say it"), ("added", "ask for it in the prompt")):
            for item in pattern[kind]:
                if item["rate"] >= RECOMMEND_PHRASE_RATE:
                    verb = "delete" if kind == "deleted" else "add"
                    recs.append(
                        {
                            "scope": scope,
                            "text": f"{scope}: editors {verb} '{item['text']}' in {_pct(item['rate'])} of edits; {advice}.",
                            "evidence": f"{item['count']} of {pattern['edited']} edited records",
                        }
                    )
        words = next((t for t in pattern["tone_shifts"] if t["marker"] == "words"), None)
        if (
            words
            and words["mean_output"]
            and abs(words["mean_delta"]) >= RECOMMEND_LENGTH_WORDS
            and abs(words["mean_delta"]) / words["mean_output"] >= RECOMMEND_LENGTH_SHARE
        ):
            change = "shorten" if words["mean_delta"] < 0 else "lengthen"
            recs.append(
                {
                    "scope": scope,
                    "text": f"{scope}: editors {change} answers by {abs(words['mean_delta']):.0f} words on average; "
                    f"ask for {'shorter' if change == 'shorten' else 'longer'} answers.",
                    "evidence": f"mean {words['mean_output']:.0f} -> {words['mean_final']:.0f} words over "
                    f"{pattern['edited']} edits",
                }
            )
        for shift in pattern["tone_shifts"]:
            if shift["marker"] != "words" and abs(shift["mean_delta"]) >= RECOMMEND_MARKER_DELTA:
                direction = "remove" if shift["mean_delta"] < 0 else "add"
                label = TONE_MARKERS[shift["marker"]][1]
                recs.append(
                    {
                        "scope": scope,
                        "text": f"{scope}: editors {direction} {label}; adjust the tone the prompt asks for.",
                        "evidence": f"mean {shift['mean_output']:.2f} -> {shift['mean_final']:.2f} per answer",
                    }
                )
    for reg in report["regressions"]:
        recs.append(
            {
                "scope": f"{reg['dimension']}={reg['key']}",
                "text": f"{reg['dimension']} {reg['key']}: acceptance fell from {_pct(reg['before'])} to "
                f"{_pct(reg['after'])} in the last 7 days; check what changed (prompt, model, adapter).",
                "evidence": f"n {reg['n_before']} before, {reg['n_after']} after, p={reg['p_value']:.3g}",
            }
        )
    for exp, result in report["experiments"].items():
        if result["winner"]:
            win = result["arms"][result["winner"]]
            recs.append(
                {
                    "scope": f"experiment={exp}",
                    "text": f"experiment {exp}: variant {result['winner']} wins with {_pct(win['acceptance_rate'])} "
                    "acceptance; roll it out.",
                    "evidence": f"{result['comparison']} = {result['difference']:+.3f}, {result['test']} p={result['p_value']:.3g}",
                }
            )
    for dim in ("task", "agent"):
        for key, group in report["groups"].get(dim, {}).items():
            if group["rejection_rate"] is not None and group["rejection_rate"] > settings.alert_rejection_rate:
                recs.append(
                    {
                        "scope": f"{dim}={key}",
                        "text": f"{dim} {key}: {_pct(group['rejection_rate'])} of answers are rejected; "
                        "review its prompt and examples.",
                        "evidence": f"{group['n']} reviewed records",
                    }
                )
    trend = report["retries"].get("trend")
    if trend and trend["n_retried"]:
        helps = "raise" if trend["helps"] else "do not significantly raise"
        recs.append(
            {
                "scope": "retries",
                "text": f"retries {helps} acceptance ({_pct(trend['first_acceptance_rate'] or 0)} on the first "
                f"attempt, {_pct(trend['retried_acceptance_rate'])} on retries)"
                + ("; keep retrying." if trend["helps"] else "; fix the first answer instead."),
                "evidence": f"{trend['n_retried']} retried records, p={trend['p_value']:.3g}",
            }
        )
    for agent, reasons in report["failure_reasons"]["agent"].items():
        top = reasons[0]
        recs.append(
            {
                "scope": f"agent={agent}",
                "text": f"agent {agent}: the most frequent failure is '{top['reason']}'; address it in the prompt.",
                "evidence": f"{top['count']} records ({_pct(top['rate'])})",
            }
        )
    return recs


def render_markdown(report: dict, max_groups: int = Settings.report_markdown_groups) -> str:
    """The report as Markdown for people (and the Dagster UI), with the `max_groups` most reviewed groups of each
    dimension."""
    t = report["totals"]
    lines = [
        "# Pattern report",
        "",
        f"As of {report['as_of']} (generated {report['generated_at']}): {t['records']} records, "
        f"{t['reviewed']} reviewed, {t['settled']} settled.",
        "",
    ]

    lines += ["## Recommendations", ""]
    lines += [f"- {r['text']} ({r['evidence']})" for r in report["recommendations"]] or ["- none"]
    lines += ["", "## Regressions (last 7 days)", ""]
    lines += [
        f"- {r['dimension']} {r['key']}: acceptance {r['before']:.1%} -> {r['after']:.1%} "
        f"(n {r['n_before']} -> {r['n_after']}, p={r['p_value']:.3g})"
        for r in report["regressions"]
    ] or ["- none"]
    for dim, groups in report["groups"].items():
        # a year of users is tens of thousands of rows, which no one reads and the UI's metadata should not carry
        shown = groups.most_reviewed(max_groups)
        lines += [
            "",
            f"## By {dim}" + (f" (the {len(shown)} most reviewed of {len(groups)})" if len(shown) < len(groups) else ""),
            "",
            "| key | n | accepted | edited | rejected | accepted 7d | accepted 30d | retained | quality | p50 ms | p95 ms | cost $ |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, g in shown:
            w = g["windows"]
            rates = [
                g["acceptance_rate"],
                g["edit_rate"],
                g["rejection_rate"],
                w["7d"]["acceptance_rate"],
                w["30d"]["acceptance_rate"],
                g["mean_retained"],
            ]
            numbers = [
                (g["mean_quality"], ".1f"),
                (g["latency_ms_p50"], ".0f"),
                (g["latency_ms_p95"], ".0f"),
                (g["cost_usd"], ".2f"),
            ]
            cells = [key, str(g["n"]), *map(_rate_cell, rates), *(_number_cell(v, f) for v, f in numbers)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Edit patterns", ""]
    for scope, p in report["edit_patterns"].items():
        lines += [f"### {scope} ({p['edited']} edits)", ""]
        for kind in ("deleted", "added"):
            lines += [f"- {kind}: " + (", ".join(f"'{i['text']}' {i['rate']:.0%}" for i in p[kind]) or "none")]
        lines += ["- tone: " + (", ".join(f"{s['marker']} {s['mean_delta']:+.2f}" for s in p["tone_shifts"]) or "none"), ""]
    lines += ["## Experiments", ""]
    for exp, e in report["experiments"].items():
        arms = ", ".join(f"{a} {v['acceptance_rate']:.1%} (n={v['n']})" for a, v in e["arms"].items())
        if e["test"]:
            size = e["sample_size"]
            verdict = (
                f"winner: {e['winner']}"
                if e["winner"]
                else "inconclusive"
                + (
                    f", about {size['additional_per_arm']} more records per arm for {size['comparison']}"
                    if size and size["n_per_arm"]
                    else ""
                )
            )
            lines.append(
                f"- {exp}: {arms}; {e['comparison']} = {e['difference']:+.3f} "
                f"[{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}], {e['test']} p={e['p_value']:.3g}; {verdict}"
            )
            if len(e["arms"]) > 2:
                lines += [
                    f"  - {c['comparison']} = {c['difference']:+.3f}, p={c['p_value']:.3g}, Holm p={c['p_holm']:.3g}"
                    for c in e["comparisons"]
                ]
        else:
            lines.append(f"- {exp}: {arms}; fewer than two arms")
    lines += ["", "## Retries", ""]
    lines += [
        f"- attempt {a['attempt']}: n={a['n']}, acceptance {_rate_cell(a['acceptance_rate'])}, quality {_number_cell(a['mean_quality'], '.1f')}"
        for a in report["retries"]["by_attempt"]
    ] or ["- none"]
    lines += ["", "## Failure reasons", ""]
    lines += [f"- {r['reason']}: {r['count']} ({r['rate']:.1%})" for r in report["failure_reasons"]["overall"]] or ["- none"]
    return "\n".join(lines) + "\n"


def check_findings(report: dict) -> dict[str, list[str]]:
    """For each check of the report (regressions and alerts), one sentence per finding; empty lists pass."""
    alerts = report["alerts"]
    return {
        "no_regressions": [
            f"{r['dimension']} {r['key']}: acceptance {r['before']:.1%} -> {r['after']:.1%} in the last 7 days "
            f"(n {r['n_before']} -> {r['n_after']}, p={r['p_value']:.3g})"
            for r in report["regressions"]
        ],
        "rejection_rate_alert": [
            f"{a['dimension']} {a['key']}: rejection rate {a['value']:.1%} > {a['threshold']:.1%} in the last 7 days"
            for a in alerts["rejection_rate"]
        ],
        "latency_p95_alert": [
            f"{a['dimension']} {a['key']}: latency p95 {a['value']:.0f} ms > {a['threshold']:.0f} ms in the last 7 days"
            for a in alerts["latency_p95"]
        ],
        "confidence_drop_alert": [
            f"{a['dimension']} {a['key']}: mean confidence fell {a['before']:.2f} -> {a['after']:.2f} "
            f"(drop {a['value']:.2f} > {a['threshold']:.2f}) in the last 7 days"
            for a in alerts["confidence_drop"]
        ],
    }

"""The pattern report recomputed in full over the lake with DuckDB: the oracle the incremental report must equal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ft_pipeline.core.aggregates import (
    DIMENSIONS,
    MAX_PHRASE_WORDS,
    RAW_COLUMNS,
    SETTLED_COLUMNS,
    TONE_MARKERS,
    WINDOWS,
    WORD,
)
from ft_pipeline.core.io import partition_dates, table_glob
from ft_pipeline.core.patterns import (
    CHURN_RATIO,
    _alerts,
    _groups,
    _members,
    _regressions,
    longest_phrases,
    recommendations,
)
from ft_pipeline.core.redaction import redact
from ft_pipeline.core.stats import compare_arms, rate, two_proportion_test
from ft_pipeline.settings import Settings

# The records of each span of group aggregates: the whole history, each window, the days before the last 7.
SPANS = {"": "true", **{f"_{w}": f"days_back < {d}" for w, d in WINDOWS.items()}, "_before": "days_back >= 7"}


def full_report(settings: Settings) -> dict[str, Any]:
    """The whole pattern report over every partition of raw_logs and settlements under the settings' lake."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        _table_view(con, "raw", settings.lake_dir, "raw_logs", RAW_COLUMNS)
        _table_view(con, "settled", settings.lake_dir, "settlements", SETTLED_COLUMNS)
        return _report(con, settings)
    finally:
        con.close()


def _table_view(con: duckdb.DuckDBPyConnection, name: str, lake_dir: Path, table: str, columns: dict) -> None:
    """A view over every partition of a lake table with exactly `columns` (NULL where a file lacks one)."""
    if partition_dates(lake_dir, table):
        source = "read_parquet('{}', union_by_name = true, hive_partitioning = false)".format(
            table_glob(lake_dir, table).replace("'", "''")
        )
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    else:
        source, present = "(SELECT 1) WHERE false", set()
    select = ", ".join(f'"{col}"' if col in present else f'NULL::{kind} AS "{col}"' for col, kind in columns.items())
    con.execute(f"CREATE TEMP VIEW {name} AS SELECT {select} FROM {source}")


def _literal(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    """Rows of a query as dicts."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _report(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, Any]:
    """Assemble every section of the report from the `raw` and `settled` views."""
    totals = _rows(
        con,
        """
        SELECT count(*) AS records,
               count(*) FILTER (WHERE decision IN ('accepted', 'edited', 'rejected')) AS reviewed,
               (SELECT count(*) FROM settled) AS settled,
               count(*) FILTER (WHERE decision = 'accepted') AS accepted,
               count(*) FILTER (WHERE decision = 'edited') AS edited,
               count(*) FILTER (WHERE decision = 'rejected') AS rejected,
               count(*) FILTER (WHERE decision = 'pending') AS pending,
               CAST(max(timestamp) AS DATE) AS as_of
        FROM raw""",
    )[0]
    as_of = totals.pop("as_of")
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "as_of": as_of.isoformat() if as_of else None,
        "totals": totals,
    }
    con.execute("""
        CREATE TEMP VIEW base AS
        SELECT r.*, s.retained,
               r.decision IN ('accepted', 'edited', 'rejected') AS reviewed,
               (SELECT CAST(max(timestamp) AS DATE) FROM raw) - CAST(r.timestamp AS DATE) AS days_back
        FROM raw r LEFT JOIN settled s USING (log_id)""")
    dims = [d for d in DIMENSIONS if con.execute(f'SELECT count("{d}") FROM raw').fetchall()[0][0]]
    _key_map(con, dims)
    listed = _group_columns(con, settings.report_min_group_n)
    report["groups"] = _groups(listed.append_column("member", _members(listed)))
    report["groups_omitted"] = _omitted(con, settings.report_min_group_n)
    report["regressions"] = _regressions(listed, settings)
    report["alerts"] = _alerts(listed, settings)
    report["edit_patterns"] = _edit_patterns(con, settings)
    report["retries"] = _retries(con, settings)
    report["failure_reasons"] = _failure_reasons(con)
    report["experiments"] = _experiments(con, settings)
    report["recommendations"] = recommendations(report, settings)
    return report


def _key_map(con: duckdb.DuckDBPyConnection, dims: list[str]) -> None:
    """Table `keymap(dimension, value, key)`: every group value with its redacted report key, so no PII
    (a user_id that is an email, say) becomes a report key; values that redact alike are grouped together."""
    rows = []
    for dim in dims:
        for (value,) in con.execute(f'SELECT DISTINCT CAST("{dim}" AS VARCHAR) FROM raw WHERE "{dim}" IS NOT NULL').fetchall():
            rows.append({"dimension": dim, "value": value, "key": redact(value)[0]})
    keymap = pa.Table.from_pylist(
        rows, schema=pa.schema([("dimension", pa.string()), ("value", pa.string()), ("key", pa.string())])
    )
    con.register("keymap_arrow", keymap)
    con.execute("CREATE TEMP TABLE keymap AS SELECT * FROM keymap_arrow")
    con.unregister("keymap_arrow")
    union = (
        " UNION ALL ".join(
            f'SELECT \'{d}\' AS dimension, CAST("{d}" AS VARCHAR) AS value, * FROM base WHERE "{d}" IS NOT NULL' for d in dims
        )
        or "SELECT NULL AS dimension, NULL AS value, * FROM base WHERE false"
    )
    con.execute(f"""
        CREATE TEMP VIEW long AS
        SELECT k.key, l.* FROM ({union}) l JOIN keymap k USING (dimension, value)""")


def _metrics(cond: str, suffix: str) -> str:
    """SQL aggregates of one group over the records that satisfy `cond`, named with `suffix`."""
    f = f"FILTER (WHERE {cond})"
    n = f"nullif(count(*) FILTER (WHERE reviewed AND {cond}), 0)"
    rates = ",".join(
        f"count(*) FILTER (WHERE decision = '{decision}' AND {cond}) / {n} AS {name}{suffix}"
        for name, decision in (("acceptance_rate", "accepted"), ("edit_rate", "edited"), ("rejection_rate", "rejected"))
    )
    return f"""
        count(*) FILTER (WHERE reviewed AND {cond}) AS n{suffix},
        count(*) FILTER (WHERE decision = 'accepted' AND {cond}) AS accepted{suffix},
        {rates},
        avg(retained) {f} AS mean_retained{suffix},
        avg(quality_score) {f} AS mean_quality{suffix},
        avg(confidence) {f} AS mean_confidence{suffix},
        quantile_cont(latency_ms, 0.5) {f} AS latency_ms_p50{suffix},
        quantile_cont(latency_ms, 0.95) {f} AS latency_ms_p95{suffix},
        sum(cost_usd) {f} AS cost_usd{suffix}"""


def _group_columns(con: duckdb.DuckDBPyConnection, min_n: int) -> pa.Table:
    """The groups (dimension, key) with at least `min_n` reviewed records and the aggregates of every span, a column
    each."""
    metrics = ",".join(_metrics(cond, suffix) for suffix, cond in SPANS.items())
    return con.sql(
        f"SELECT dimension, key, {metrics} FROM long GROUP BY dimension, key "
        f"HAVING count(*) FILTER (WHERE reviewed) >= {int(min_n)} ORDER BY dimension, key"
    ).to_arrow_table()


def _omitted(con: duckdb.DuckDBPyConnection, min_n: int) -> dict[str, int]:
    """Per dimension, the groups with fewer than `min_n` reviewed records."""
    sql = """SELECT dimension, count(*) FROM (SELECT dimension, key FROM long GROUP BY ALL
             HAVING count(*) FILTER (WHERE reviewed) < ?) GROUP BY ALL ORDER BY dimension"""
    return dict(con.execute(sql, [min_n]).fetchall())


def _edit_patterns(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict:
    """Per agent (task when a record has no agent): phrases editors delete and add, and tone shifts."""
    con.execute("""
        CREATE TEMP VIEW edits AS
        SELECT log_id, coalesce(agent, task) AS scope, output, final_text, deleted_spans, added_spans
        FROM settled WHERE decision = 'edited' AND coalesce(agent, task) IS NOT NULL""")
    edited = dict(con.execute("SELECT scope, count(*) FROM edits GROUP BY scope").fetchall())
    # Each edit counts a phrase once, however often it occurs in its spans.
    counts = _rows(
        con,
        f"""
        WITH spans AS (
            SELECT scope, log_id, 'deleted' AS kind, unnest(deleted_spans) AS span FROM edits
            UNION ALL
            SELECT scope, log_id, 'added' AS kind, unnest(added_spans) AS span FROM edits),
        words AS (
            SELECT scope, log_id, kind, regexp_extract_all(lower(span), {_literal(WORD)}) AS w FROM spans),
        starts AS (
            SELECT scope, log_id, kind, w, unnest(range(1, len(w) + 1)) AS i FROM words WHERE len(w) > 0),
        grams AS (
            SELECT scope, log_id, kind, array_to_string(w[i:i + n - 1], ' ') AS phrase
            FROM starts, range(1, {MAX_PHRASE_WORDS + 1}) t(n) WHERE i + n - 1 <= len(w))
        SELECT scope, kind, phrase, count(DISTINCT log_id) AS count
        FROM grams GROUP BY ALL HAVING count(DISTINCT log_id) >= ?""",
        [settings.min_phrase_support],
    )
    candidates: dict[tuple[str, str], dict[str, int]] = {}
    for row in counts:
        candidates.setdefault((row["scope"], row["kind"]), {})[row["phrase"]] = row["count"]
    tone = _tone_shifts(con)
    patterns = {}
    for scope, n_edited in sorted(edited.items()):
        key = redact(scope)[0]
        patterns[key] = {"edited": n_edited, "tone_shifts": tone.get(scope, [])}
        for kind, opposite in (("deleted", "added"), ("added", "deleted")):
            against = candidates.get((scope, opposite), {})
            # Words editors delete and add alike (numbers, reworded terms) are churn, not a habit of the model.
            one_way = {p: c for p, c in candidates.get((scope, kind), {}).items() if c > CHURN_RATIO * against.get(p, 0)}
            phrases = longest_phrases(one_way)[: settings.report_top_phrases]
            patterns[key][kind] = [{"text": p, "count": c, "rate": c / n_edited} for p, c in phrases]
    return patterns


def _tone_shifts(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict]]:
    """Per scope, the mean count of each tone marker in the output and in the approved text, and the delta."""
    counts = ", ".join(
        f'avg(len(regexp_extract_all(lower(output), {_literal(rx)}))) AS "{m}_output", '
        f'avg(len(regexp_extract_all(lower(final_text), {_literal(rx)}))) AS "{m}_final"'
        for m, (rx, _) in TONE_MARKERS.items()
    )
    shifts = {}
    for row in _rows(
        con, f"SELECT scope, {counts} FROM edits WHERE output IS NOT NULL AND final_text IS NOT NULL GROUP BY scope"
    ):
        shifts[row["scope"]] = [
            {
                "marker": m,
                "mean_output": row[f"{m}_output"],
                "mean_final": row[f"{m}_final"],
                "mean_delta": row[f"{m}_final"] - row[f"{m}_output"],
            }
            for m in TONE_MARKERS
        ]
    return shifts


def _retries(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict:
    """Acceptance and quality by attempt number, overall and per task, and whether retrying helps."""
    by_attempt = _rows(
        con,
        """
        SELECT CASE WHEN GROUPING(task) = 1 THEN NULL ELSE task END AS task, coalesce(attempt, 1) AS attempt,
               count(*) FILTER (WHERE reviewed) AS n,
               count(*) FILTER (WHERE decision = 'accepted') AS accepted,
               avg(quality_score) AS mean_quality
        FROM base GROUP BY GROUPING SETS ((coalesce(attempt, 1)), (task, coalesce(attempt, 1)))
        ORDER BY task NULLS FIRST, attempt""",
    )
    trends = _rows(
        con,
        """
        SELECT CASE WHEN GROUPING(task) = 1 THEN NULL ELSE task END AS task,
               count(*) FILTER (WHERE reviewed AND coalesce(attempt, 1) = 1) AS n_first,
               count(*) FILTER (WHERE decision = 'accepted' AND coalesce(attempt, 1) = 1) AS accepted_first,
               count(*) FILTER (WHERE reviewed AND attempt > 1) AS n_retried,
               count(*) FILTER (WHERE decision = 'accepted' AND attempt > 1) AS accepted_retried,
               regr_slope(CAST(decision = 'accepted' AS DOUBLE), coalesce(attempt, 1)) FILTER (WHERE reviewed)
                   AS acceptance_slope,
               regr_slope(quality_score, coalesce(attempt, 1)) AS quality_slope
        FROM base GROUP BY GROUPING SETS ((), (task)) ORDER BY task NULLS FIRST""",
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
        WITH reasons AS (SELECT DISTINCT log_id, unnest(failure_reasons) AS reason FROM raw),
        sized AS (SELECT dimension, key, count(*) OVER (PARTITION BY dimension, key) AS records, log_id
                  FROM long WHERE dimension IN ('agent', 'topic')
                  UNION ALL SELECT 'overall', NULL, count(*) OVER (), log_id FROM raw)
        SELECT s.dimension, s.key, r.reason, any_value(s.records) AS records, count(*) AS count
        FROM sized s JOIN reasons r USING (log_id) WHERE r.reason IS NOT NULL
        GROUP BY ALL ORDER BY s.dimension, s.key, count DESC, r.reason""",
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
            SELECT experiment_id, variant, count(*) FILTER (WHERE decision = 'accepted') AS accepted,
                   count(*) FILTER (WHERE reviewed) AS n
            FROM base WHERE experiment_id IS NOT NULL AND variant IS NOT NULL GROUP BY ALL""",
    ):
        arm = arms.setdefault(redact(row["experiment_id"])[0], {})
        name = redact(row["variant"])[0]
        x, n = arm.get(name, (0, 0))
        arm[name] = (x + row["accepted"], n + row["n"])
    return {exp: compare_arms(a, settings.significance) for exp, a in sorted(arms.items())}

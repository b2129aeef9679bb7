"""Inbox JSONL files -> raw_logs lake partitions and quarantine, validated column-wise in DuckDB."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa

from ft_pipeline.core.io import atomic_path, partition_dates, partition_file, write_jsonl_atomic
from ft_pipeline.core.schema import PATTERN_REASONS, RAW_LOG_SCHEMA, TIMESTAMP_SHAPE, FieldRule, field_rules, record_problems
from ft_pipeline.settings import Settings

TABLE = "raw_logs"
# bytes of inbox text handed to DuckDB at a time: large enough for its threads, small enough to bound memory
CHUNK_BYTES = 32 << 20
# rows per Arrow batch inside a chunk, so that DuckDB scans one chunk on all its threads
BATCH_ROWS = 8192
WHITESPACE = " \t\r\n"


def inbox_files(inbox_dir: Path) -> list[Path]:
    """The *.jsonl and *.jsonl.gz files under `inbox_dir`, sorted; hidden files and folders (spools) are skipped."""
    root = Path(inbox_dir)
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.rglob("*.jsonl*")
        if p.name.endswith((".jsonl", ".jsonl.gz")) and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def line_batches(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pa.Table]:
    """The lines of one file (gzip or plain) as Arrow tables of (line_no, raw bytes with newline), a chunk at a time."""
    opener = gzip.open if path.name.endswith(".gz") else open
    next_line, rest = 1, b""
    with opener(path, "rb") as fh:
        while True:
            block = fh.read(chunk_bytes)
            data = rest + block
            if not block:
                if data:  # a last line without a newline
                    yield _lines_table(data, np.array([len(data)]), next_line)
                return
            ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
            if len(ends):
                yield _lines_table(data, ends, next_line)
                next_line += len(ends)
                data = data[ends[-1]:]
            rest = data


def _lines_table(data: bytes, ends: np.ndarray, first_line: int) -> pa.Table:
    """Zero-copy Arrow view of the lines of `data` that end at the offsets `ends`."""
    offsets = np.concatenate(([0], ends)).astype(np.int32)
    raw = pa.Array.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    line_no = pa.array(np.arange(first_line, first_line + len(ends), dtype=np.int64))
    return pa.Table.from_arrays([line_no, raw], names=["line_no", "raw"]).combine_chunks().to_batches(BATCH_ROWS)


def _connect(settings: Settings, spill_dir: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # naive timestamps read as UTC, and day boundaries are UTC days
    con.execute(f"SET memory_limit = '{settings.ingest_memory_limit}'")
    if spill_dir:
        con.execute(f"SET temp_directory = '{spill_dir}'")
    return con


def inbox_dates(paths: Iterable[Path]) -> set[str]:
    """UTC dates (YYYY-MM-DD) of the parseable timestamps in the given inbox files."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    dates: set[str] = set()
    for path in paths:
        for batches in line_batches(Path(path)):
            con.register("chunk", pa.Table.from_batches(batches))
            rows = con.execute(
                "SELECT DISTINCT strftime(try_cast(try(json_extract_string(try(decode(raw)), '$.timestamp')) AS TIMESTAMPTZ), '%Y-%m-%d') "
                "FROM chunk"
            ).fetchall()
            dates.update(d for (d,) in rows if d)
    return dates


def _in_days(days: list[str] | None) -> str:
    """SQL condition selecting the rows of `days` (all rows when None)."""
    return "true" if days is None else f"day IN (SELECT unnest({_sql_list(days)}))"


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_sql_str(v) for v in values) + "]::VARCHAR[]"


def _type_ok(x: str, types: Iterable[str]) -> str:
    """SQL that is true when the minified JSON text `x` is one of the JSON Schema `types`."""
    number = f"coalesce(isfinite(try_cast({x} AS DOUBLE)), false)"
    tests = {
        "string": f"starts_with({x}, '\"')",
        "number": number,
        "integer": f"({number} AND try_cast({x} AS DOUBLE) = trunc(try_cast({x} AS DOUBLE)))",
        "array": f"starts_with({x}, '[')",
        "object": f"starts_with({x}, '{{')",
        "boolean": f"{x} IN ('true', 'false')",
    }
    return "(" + " OR ".join(tests[t] for t in types if t != "null") + ")"


def _field_checks(rule: FieldRule) -> list[tuple[str, str]]:
    """(failing condition, reason expression) pairs for one field, in the order record_problems checks them."""
    name, x = rule.name, f's."{rule.name}"'  # the field's JSON text, NULL when absent or null
    present = f"list_contains(keys, {_sql_str(name)})"
    if rule.required:
        absent = [(f"{x} IS NULL", f"CASE WHEN {present} THEN 'bad_type:{name}' ELSE 'missing_field:{name}' END")]
    else:
        absent = [] if rule.nullable else [(f"{x} IS NULL AND {present}", f"'bad_type:{name}'")]
    return absent + [(f"{x} IS NOT NULL AND {cond}", reason) for cond, reason in _value_checks(rule)]


def _value_checks(rule: FieldRule) -> list[tuple[str, str]]:
    """(failing condition, reason expression) pairs on a present, non-null value of one field."""
    name, spec = rule.name, rule.spec
    x = f's."{name}"'
    text = f"({x} ->> '$')"
    checks = []
    if rule.types:
        checks.append((f"NOT {_type_ok(x, rule.types)}", f"'bad_type:{name}'"))
    if "minLength" in spec or "maxLength" in spec:
        checks.append((f"length({text}) NOT BETWEEN {spec.get('minLength', 0)} AND {spec.get('maxLength', 2**62)}", f"'bad_length:{name}'"))
    if "pattern" in spec:
        reason = PATTERN_REASONS.get(name, f"bad_pattern:{name}")
        checks.append((f"NOT regexp_matches({text}, {_sql_str(spec['pattern'])})", _sql_str(reason)))
    if spec.get("format") == "date-time":
        checks.append((f"(NOT regexp_matches({text}, {_sql_str(TIMESTAMP_SHAPE.pattern)}) OR try_cast({text} AS TIMESTAMPTZ) IS NULL)", "'bad_timestamp'"))
    if "enum" in spec:
        allowed = ", ".join(_sql_str(json.dumps(v)) for v in spec["enum"] if v is not None)
        checks.append((f"{x} NOT IN ({allowed})", f"'bad_enum:{name}'"))
    if "minimum" in spec or "maximum" in spec:
        bounds = [f"try_cast({x} AS DOUBLE) < {spec['minimum']}" if "minimum" in spec else None,
                  f"try_cast({x} AS DOUBLE) > {spec['maximum']}" if "maximum" in spec else None]
        checks.append(("(" + " OR ".join(b for b in bounds if b) + ")", f"'out_of_range:{name}'"))
    if "items" in spec:
        checks += _item_checks(name, x, spec["items"])
    return checks


_DUCKDB_TYPES = {"string": "VARCHAR", "object": "OBJECT", "array": "ARRAY", "boolean": "BOOLEAN"}


def _item_checks(name: str, x: str, items: dict) -> list[tuple[str, str]]:
    """Checks of an array's items: their type, required properties, property types and enums."""
    checks = []
    if "type" in items:
        checks.append((f"NOT list_has_all([{_sql_str(_DUCKDB_TYPES[items['type']])}], json_type({x}, '$[*]'))", f"'bad_type:{name}'"))
    for prop in items.get("required", []):
        checks.append((f"len(json_extract({x}, '$[*].{prop}')) <> json_array_length({x})", f"'missing_field:{name}.{prop}'"))
    for prop, spec in items.get("properties", {}).items():
        if "type" in spec:
            checks.append((f"NOT list_has_all([{_sql_str(_DUCKDB_TYPES[spec['type']])}], json_type({x}, '$[*].{prop}'))", f"'bad_type:{name}.{prop}'"))
        if "enum" in spec:
            allowed = _sql_list(json.dumps(v) for v in spec["enum"])
            checks.append((f"NOT list_has_all({allowed}, json_extract({x}, '$[*].{prop}')::VARCHAR[])", f"'bad_enum:{name}.{prop}'"))
    return checks


def _value(rule: FieldRule) -> str:
    """SQL for the lake value of one field from its JSON text."""
    x = f's."{rule.name}"'
    kind = rule.kind
    if kind == "timestamp":
        return f"try_cast(({x} ->> '$') AS TIMESTAMPTZ)"
    if kind == "number":
        return f"try_cast({x} AS DOUBLE)"
    if kind == "integer":
        return f"try_cast(try_cast({x} AS DOUBLE) AS BIGINT)"
    if kind == "string_list":
        return f"from_json({x}, '[\"VARCHAR\"]')"
    if kind == "json":
        return x
    return f"({x} ->> '$')"


def _day(rules: tuple[FieldRule, ...]) -> str:
    """SQL for the UTC day (YYYY-MM-DD) of a row, from its timestamp field."""
    return f"strftime({_value(next(r for r in rules if r.kind == 'timestamp'))}, '%Y-%m-%d')"


def _fingerprint(rules: tuple[FieldRule, ...]) -> str:
    """SQL for the content hash: every field's minified JSON text and the extra fields, so key order and spacing do not count."""
    return "md5(" + " || chr(30) || ".join([f"coalesce(s.\"{r.name}\"::VARCHAR, '')" for r in rules] + ["coalesce(extra, '')"]) + ")"


def classify_sql(first_day: str, last_day: str) -> str:
    """The query that turns a chunk of raw lines into typed rows, each with a quarantine reason or NULL."""
    rules = field_rules()
    known = _sql_list(r.name for r in rules)
    structure = json.dumps({r.name: "JSON" for r in rules}).replace("'", "''")
    checks = [c for r in rules for c in _field_checks(r)]
    checks.append(("day NOT BETWEEN '%s' AND '%s'" % (first_day, last_day), "'out_of_range:timestamp'"))
    reason = "CASE WHEN line IS NULL THEN 'invalid_utf8' " \
             "WHEN s IS NULL THEN CASE WHEN json_valid(line) THEN 'not_an_object' ELSE 'invalid_json' END " + \
             " ".join(f"WHEN {cond} THEN {why}" for cond, why in checks) + " END"
    # values only of valid rows: a function like from_json would fail on the wrongly typed ones
    values = ", ".join(f"CASE WHEN reason IS NULL THEN {_value(r)} END AS \"{r.name}\"" for r in rules)
    extra = (f"CASE WHEN NOT list_has_all({known}, keys) THEN '{{' || array_to_string(list_transform("
             f"list_filter(keys, lambda k: NOT list_contains({known}, k)), "
             f"lambda k: to_json(k) || ':' || json_extract(line, '$.' || to_json(k))), ',') || '}}' END")
    day = _day(rules)
    return f"""
    WITH lines AS (
        SELECT line_no, raw, rtrim(try(decode(raw)), chr(13) || chr(10)) AS line FROM chunk
    ), parsed AS (
        SELECT line_no, raw, line,
               CASE WHEN ltrim(line, '{WHITESPACE}')[1] = '{{' THEN try(from_json(line, '{structure}')) END AS s
        FROM lines WHERE line IS NULL OR trim(line, '{WHITESPACE}') <> ''
    ), keyed AS (
        SELECT *, CASE WHEN s IS NOT NULL THEN json_keys(line) END AS keys FROM parsed
    ), typed AS (
        SELECT *, {day} AS day, {extra} AS extra FROM keyed
    ), judged AS (
        SELECT *, {reason} AS reason FROM typed
    )
    SELECT line_no, reason, CASE WHEN reason IS NOT NULL THEN raw END AS bad_raw, day, {values},
           extra, CASE WHEN reason IS NULL THEN {_fingerprint(rules)} END AS content_hash
    FROM judged
    """


def clean_file_sql(path: Path, file_idx: int, first_day: str, last_day: str) -> str:
    """The query that types every record of a file with DuckDB's own parallel JSON reader, marking rows that break a rule."""
    # The reader cannot see unknown keys, tell a null from an absent key, or number lines: `screen_sql` covers the first
    # two, and a file whose rows need line numbers (quarantine, conflicts) is parsed line by line. Rows are not numbered
    # here at all: a row number serializes the reader and cost more than everything else.
    rules = field_rules()
    columns = "{" + ", ".join(f"{_sql_str(r.name)}: 'JSON'" for r in rules) + "}"
    dirty = " OR ".join(
        [f's."{r.name}" IS NULL' for r in rules if r.required]
        + [f'(s."{r.name}" IS NOT NULL AND {cond})' for r in rules for cond, _ in _value_checks(r)]
        + [f"day NOT BETWEEN '{first_day}' AND '{last_day}'"]
    )
    values = ", ".join(f'{_value(r)} AS "{r.name}"' for r in rules)
    return f"""
    SELECT {file_idx}, NULL AS line_no, CASE WHEN {dirty} THEN 'unchecked' END AS reason, NULL AS bad_raw,
           day, {values}, extra, {_fingerprint(rules)} AS content_hash
    FROM (SELECT *, {_day(rules)} AS day, NULL::VARCHAR AS extra
          FROM read_json({_sql_str(str(path))}, format='newline_delimited', columns={columns}, auto_detect=false) s) s
    """


def screen_sql(path: Path) -> str:
    """The query that counts a file's records, whether all their keys are known and distinct, and how many give each optional non-null field."""
    rules = field_rules()
    known = _sql_list(r.name for r in rules)
    given = "".join(f", count_if(list_contains(k, {_sql_str(r.name)}))" for r in _non_null_optional(rules))
    return (f"SELECT count(*), coalesce(bool_and(list_has_all({known}, k) AND len(k) = len(list_distinct(k))), true){given} "
            f"FROM (SELECT json_keys(json) AS k FROM read_ndjson_objects({_sql_str(str(path))}))")


def _non_null_optional(rules: tuple[FieldRule, ...]) -> list[FieldRule]:
    """The optional fields that may be absent but not null."""
    return [r for r in rules if not r.required and not r.nullable]


def _parse_clean_file(con, path: Path, file_idx: int, first_day: str, last_day: str) -> bool:
    """Parse a file into `parsed` the fast way when every record in it is valid; False, with nothing kept, otherwise."""
    try:
        lines, known_keys, *given = con.execute(screen_sql(path)).fetchall()[0]
        if not known_keys:
            return False
        con.execute(f"INSERT INTO parsed {clean_file_sql(path, file_idx, first_day, last_day)}")
    except duckdb.InvalidInputException:  # a line that is not a JSON object, or not UTF-8
        return False
    optional = ", ".join(f'count("{r.name}")' for r in _non_null_optional(field_rules()))
    rows, dirty, *non_null = con.execute(f"SELECT count(*), count(reason), {optional} FROM parsed WHERE file_idx = {file_idx}").fetchall()[0]
    # a present key with a NULL value is a null, which these fields must not be
    if rows == lines and not dirty and non_null == given:
        return True
    con.execute(f"DELETE FROM parsed WHERE file_idx = {file_idx}")
    return False


def _parse_lines(con, path: Path, file_idx: int, query: str) -> None:
    """Parse a file line by line into `parsed`, each line with its number and, when rejected, its reason and bytes."""
    for batches in line_batches(path):
        con.register("chunk", pa.Table.from_batches(batches))
        con.execute(f"INSERT INTO parsed SELECT {file_idx}, * FROM ({query})")


@dataclass
class IngestResult:
    """What one ingest run did: counts for metadata, and where every line went."""

    files: int = 0
    lines: int = 0  # non-blank lines read
    new: int = 0  # rows added to the lake
    duplicates: int = 0  # valid lines whose record the lake (or an earlier line) already holds
    quarantined: Counter = field(default_factory=Counter)  # reason -> lines
    pending: int = 0  # valid new rows of days this run did not materialize
    partitions: dict[str, int] = field(default_factory=dict)  # day -> rows stored after the run
    tasks: dict[str, int] = field(default_factory=dict)  # task -> rows stored in those partitions
    preview: list[dict] = field(default_factory=list)  # a few of the new rows

    @property
    def stored(self) -> int:
        return sum(self.partitions.values())

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


LAKE_COLUMNS = ", ".join(f'"{name}"' for name in RAW_LOG_SCHEMA.names)
# the lake columns of parsed rows: contract defaults fill absent fields
NEW_COLUMNS = ", ".join(
    f'coalesce("{r.name}", {_sql_str(r.spec["default"])}) AS "{r.name}"' if "default" in r.spec else f'"{r.name}"'
    for r in field_rules()
)


def ingest(settings: Settings, days: Iterable[str] | None = None, last_day: str | None = None) -> IngestResult:
    """Ingest every inbox file: store the new valid records of `days` (default: all), quarantine the bad lines."""
    last_day = last_day or datetime.now(timezone.utc).date().isoformat()
    first_day = date.fromisoformat(settings.partitions_start).isoformat()
    files = inbox_files(settings.inbox_dir)
    settings.lake_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ingest-", dir=settings.lake_dir))  # same filesystem: moves are renames
    try:
        con = _connect(settings, str(work / "spill"))
        result = _ingest(con, settings, files, days, first_day, last_day, work)
        con.close()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ingest(con, settings: Settings, files: list[Path], days, first_day: str, last_day: str, work: Path) -> IngestResult:
    result = IngestResult(files=len(files))
    columns = ", ".join(f'"{r.name}" {_DUCK_COLUMN[r.kind]}' for r in field_rules())
    con.execute(f"CREATE TABLE parsed (file_idx INTEGER, line_no BIGINT, reason VARCHAR, bad_raw BLOB, day VARCHAR, "
                f"{columns}, extra VARCHAR, content_hash VARCHAR)")
    query = classify_sql(first_day, last_day)
    by_line = set()
    for file_idx, path in enumerate(files):
        if not _parse_clean_file(con, path, file_idx, first_day, last_day):
            _parse_lines(con, path, file_idx, query)
            by_line.add(file_idx)
    result.lines = con.execute("SELECT count(*) FROM parsed").fetchone()[0]

    existing = [partition_file(settings.lake_dir, TABLE, d) for d in partition_dates(settings.lake_dir, TABLE)]
    _decide_fates(con, existing)
    # a conflict needs true line numbers, to name the line and to know which of a file's records came first
    redo = [i for (i,) in con.execute(
        "SELECT DISTINCT file_idx FROM fate WHERE fate = 'conflicting_duplicate' ORDER BY 1").fetchall() if i not in by_line]
    if redo:
        for file_idx in redo:
            con.execute(f"DELETE FROM parsed WHERE file_idx = {file_idx}")
            _parse_lines(con, files[file_idx], file_idx, query)
        _decide_fates(con, existing)

    wanted = None if days is None else sorted(set(days))
    for fate, selected, count in con.execute(f"SELECT fate, {_in_days(wanted)}, count(*) FROM fate GROUP BY ALL").fetchall():
        if fate == "conflicting_duplicate":
            result.quarantined[fate] += count
        elif fate == "duplicate":
            result.duplicates += count
        elif selected:
            result.new += count
        else:
            result.pending += count
    for reason, count in con.execute("SELECT reason, count(*) FROM parsed WHERE reason IS NOT NULL GROUP BY reason").fetchall():
        result.quarantined[reason] += count

    _write_quarantine(con, settings, files)
    _write_partitions(con, settings, files, wanted, work, result)
    return result


def _decide_fates(con, existing: list[Path]) -> None:
    """Table `fate`: each valid parsed row is new, a duplicate, or a conflicting duplicate of the lake or an earlier line."""
    # the first record stored under a log_id wins: the lake's, else the inbox's earliest line
    lake_ids = f"SELECT log_id, content_hash FROM read_parquet({_sql_list(map(str, existing))})" if existing else \
        "SELECT NULL::VARCHAR AS log_id, NULL::VARCHAR AS content_hash WHERE false"
    con.execute(f"""
        CREATE OR REPLACE TABLE fate AS
        WITH ranked AS (
            SELECT p.rowid AS row_id, p.file_idx, p.line_no, p.day, p.content_hash, l.content_hash AS lake_hash,
                   first_value(p.content_hash) OVER w AS first_hash, row_number() OVER w AS rank
            FROM parsed p LEFT JOIN ({lake_ids}) l USING (log_id)
            WHERE p.reason IS NULL
            WINDOW w AS (PARTITION BY p.log_id ORDER BY p.file_idx, p.line_no)
        )
        SELECT row_id, file_idx, line_no, day,
               CASE WHEN coalesce(lake_hash, first_hash) <> content_hash THEN 'conflicting_duplicate'
                    WHEN lake_hash IS NOT NULL OR rank > 1 THEN 'duplicate' ELSE 'new' END AS fate
        FROM ranked
    """)


_DUCK_COLUMN = {"string": "VARCHAR", "number": "DOUBLE", "integer": "BIGINT", "timestamp": "TIMESTAMPTZ",
                "string_list": "VARCHAR[]", "json": "VARCHAR"}


def _write_quarantine(con, settings: Settings, files: list[Path]) -> None:
    """Rewrite each source file's quarantine file with its rejected lines (one file per source: reruns never duplicate)."""
    for file_idx, path in enumerate(files):
        rows = con.execute(
            "SELECT line_no, reason, bad_raw FROM parsed WHERE file_idx = $i AND reason IS NOT NULL "
            "UNION ALL SELECT line_no, fate, NULL FROM fate WHERE file_idx = $i AND fate = 'conflicting_duplicate' "
            "ORDER BY line_no",
            {"i": file_idx},
        ).fetchall()
        source = _source_name(settings, path)
        target = settings.quarantine_dir / (source.replace("/", "__") + ".jsonl")
        if not rows:
            target.unlink(missing_ok=True)
            continue
        # conflicting lines were valid, so their text was not kept: read those few lines again
        missing = {line_no for line_no, _, raw in rows if raw is None}
        refetched = _read_lines(path, missing) if missing else {}
        entries = []
        for line_no, reason, raw in rows:
            text = (raw if raw is not None else refetched[line_no]).decode("utf-8", "replace").rstrip("\r\n")
            entries.append({"source_file": source, "line_no": line_no, "reason": reason,
                            "detail": _detail(reason, text, settings), "raw": text})
        write_jsonl_atomic(entries, target)


def _source_name(settings: Settings, path: Path) -> str:
    return path.relative_to(settings.inbox_dir).as_posix()


def _read_lines(path: Path, line_nos: set[int]) -> dict[int, bytes]:
    """The raw bytes of some lines of a file."""
    wanted = pa.array(sorted(line_nos), pa.int64())
    found: dict[int, bytes] = {}
    for batches in line_batches(path):
        chunk = pa.Table.from_batches(batches)
        hits = chunk.filter(pa.compute.is_in(chunk["line_no"], value_set=wanted))
        found.update(zip(hits["line_no"].to_pylist(), hits["raw"].to_pylist()))
    return found


def _detail(reason: str, text: str, settings: Settings) -> str:
    """A human-readable explanation of why a line was quarantined."""
    if reason == "invalid_utf8":
        return "the line is not valid UTF-8"
    if reason == "conflicting_duplicate":
        return "a record with this log_id is already stored with different content"
    try:
        record = json.loads(text)
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    if reason == "out_of_range:timestamp":
        return f"timestamp {record.get('timestamp')!r} is outside the daily partitions (from {settings.partitions_start} to today)"
    return next((detail for code, detail in record_problems(record) if code == reason), reason)


def _write_partitions(con, settings: Settings, files: list[Path], wanted: list[str] | None, work: Path, result: IngestResult) -> None:
    """Merge each touched partition's stored rows with its new rows and swap the file in atomically."""
    in_run = _in_days(wanted)
    new_days = [d for (d,) in con.execute(f"SELECT DISTINCT day FROM fate WHERE fate = 'new' AND {in_run} ORDER BY day").fetchall()]
    if new_days:
        sources = _sql_list(_source_name(settings, p) for p in files)
        old = [str(partition_file(settings.lake_dir, TABLE, d)) for d in new_days if partition_file(settings.lake_dir, TABLE, d).is_file()]
        old_rows = f"UNION ALL SELECT {LAKE_COLUMNS}, strftime(timestamp, '%Y-%m-%d') AS day FROM read_parquet({_sql_list(old)})" if old else ""
        staging = work / "staging"
        now = datetime.now(timezone.utc).isoformat()
        con.execute(f"""
            COPY (
                SELECT {LAKE_COLUMNS}, day FROM (
                    SELECT {NEW_COLUMNS}, extra, content_hash, ({sources})[p.file_idx + 1] AS source_file,
                           TIMESTAMPTZ '{now}' AS ingested_at, day
                    FROM parsed p WHERE p.rowid IN (SELECT row_id FROM fate WHERE fate = 'new' AND {in_run})
                ) {old_rows}
            ) TO '{staging}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (day))
        """)
        for d in new_days:
            (written,) = (staging / f"day={d}").glob("*.parquet")
            with atomic_path(partition_file(settings.lake_dir, TABLE, d)) as tmp:
                os.replace(written, tmp)
    reported = new_days if wanted is None else wanted
    stored = [str(partition_file(settings.lake_dir, TABLE, d)) for d in reported if partition_file(settings.lake_dir, TABLE, d).is_file()]
    if stored:
        lake = f"read_parquet({_sql_list(stored)})"
        result.partitions = dict(con.execute(f"SELECT strftime(timestamp, '%Y-%m-%d'), count(*) FROM {lake} GROUP BY 1 ORDER BY 1").fetchall())
        result.tasks = dict(con.execute(f"SELECT task, count(*) FROM {lake} GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
    preview = con.execute(
        "SELECT log_id, timestamp, task, decision, left(prompt, 60) AS prompt "
        f"FROM (SELECT rowid AS row_id, file_idx, line_no, {NEW_COLUMNS} FROM parsed) p JOIN fate f USING (row_id) "
        f"WHERE fate = 'new' AND {in_run} ORDER BY p.file_idx, p.line_no LIMIT 5"
    )
    names = [c[0] for c in preview.description]
    result.preview = [dict(zip(names, row)) for row in preview.fetchall()]

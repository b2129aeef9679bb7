"""Inbox JSONL files -> raw_logs lake partitions and quarantine, validated column-wise in DuckDB."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast

import duckdb
import numpy as np
import pyarrow as pa

from ft_pipeline.core import manifest
from ft_pipeline.core.feedback import EMPTY_REASON, FEEDBACK_SCHEMA, WAITING_FILE, given_one_of, mark_stale
from ft_pipeline.core.feedback import KIND as FEEDBACK_KIND
from ft_pipeline.core.feedback import TABLE as FEEDBACK_TABLE
from ft_pipeline.core.io import (
    atomic_path,
    partition_dates,
    partition_file,
    remove_stale_temps,
    write_jsonl_atomic,
    write_parquet_atomic,
)
from ft_pipeline.core.locks import hold
from ft_pipeline.core.schema import (
    BLANK_CHARS,
    BOM,
    CALL_CONTRACT,
    FEEDBACK_CONTRACT,
    KIND_FIELD,
    PATTERN_REASONS,
    RAW_LOG_SCHEMA,
    TIMESTAMP_SHAPE,
    FieldRule,
    LineLimits,
    field_rules,
    judge_line,
)
from ft_pipeline.core.scratch import scratch_dir, sweep
from ft_pipeline.settings import Settings

TABLE = "raw_logs"
# bytes of inbox text handed to DuckDB at a time: large enough for its threads, small enough to bound memory
CHUNK_BYTES = 32 << 20
# rows per Arrow batch inside a chunk, so that DuckDB scans one chunk on all its threads
BATCH_ROWS = 8192
# rows a DuckDB thread buffers before flushing its PARTITION_BY output: the default (524288) held every day of a
# 1M-line file in memory (1.1 GB) and wrote them at the end; small flushes measured 37% faster at 540 MB
PARTITION_FLUSH_ROWS = 4096
# keys outside the contract that the parallel reader declares as columns; a file with more (keys made of ids, say)
# is parsed line by line
MAX_UNKNOWN_KEYS = 256
# lake files: snappy (DuckDB's default) wrote 1M rows 0.7 s (9%) faster than zstd level 1, for files 40% larger (201 MB against 143)
PARQUET = "FORMAT parquet, COMPRESSION snappy"
WHITESPACE = " \t\r\n"
# the inbox folder that ingested files move to, one folder per day of ingest
PROCESSED_DIR = "processed"
# lines dated up to this many days after the last partition day keep their file in the inbox: a producer's clock a
# little ahead of ours (a record stamped just after midnight) is stored once its day has a partition, not lost to quarantine
FUTURE_GRACE_DAYS = 1


def inbox_entries(inbox_dir: Path) -> list[Path]:
    """Every entry named *.jsonl or *.jsonl.gz under `inbox_dir`, of any kind, sorted.

    Hidden files and folders (spools) and the archive of ingested files (`processed/`) are skipped, the archive without
    being walked: listing the inbox costs what it holds, not what it ever held.
    """
    root = Path(inbox_dir)
    if not root.is_dir():
        return []
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (d == PROCESSED_DIR and folder == str(root))]
        found += [Path(folder, n) for n in names + dirs if n.endswith((".jsonl", ".jsonl.gz")) and not n.startswith(".")]
    return sorted(found)


def inbox_files(inbox_dir: Path) -> list[Path]:
    """The inbox entries that are regular files (symlinks and special files are refused), sorted."""
    return [p for p in inbox_entries(inbox_dir) if file_problem(p) is None]


def file_problem(path: Path) -> str | None:
    """Why an inbox entry is not read (`bad_file:<why>`), from its own metadata: None for a regular file that is no symlink."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:  # DuckDB cannot open it, and no name in the lake or the UI could say which file it was
        return "bad_file:bad_name"
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "bad_file:vanished"
    if stat.S_ISLNK(mode):  # a link would pull in any file the process can read, from outside the inbox
        return "bad_file:symlink"
    if not stat.S_ISREG(mode):  # a FIFO would block the run, a device or a folder is no log file
        return "bad_file:not_a_regular_file"
    return None


# what reading a whole file can raise: a gzip header or stream that is broken or cut short, an I/O or permission error
READ_ERRORS = (OSError, EOFError, zlib.error, duckdb.IOException)


def read_problem(exc: BaseException) -> str:
    """The `bad_file:<why>` reason of an error raised while reading an inbox file."""
    if isinstance(exc, PermissionError):
        return "bad_file:unreadable"
    if isinstance(exc, gzip.BadGzipFile) or "not a gzip" in str(exc).lower():
        return "bad_file:not_gzip"
    if isinstance(exc, EOFError | zlib.error) or "gzip" in str(exc).lower():
        return "bad_file:corrupt_gzip"
    return "bad_file:unreadable"


@contextmanager
def open_inbox_file(path: Path) -> Iterator[BinaryIO]:
    """An inbox file opened for reading its bytes (gunzipped for *.gz), never through a symlink swapped in since it was listed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as raw:
        if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        if path.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield cast(BinaryIO, unzipped)
        else:
            yield raw


def line_batches(path: Path) -> Iterator[pa.Table]:
    """The lines of one file (gzip or plain) as Arrow tables of (line_no, raw bytes with newline), a chunk at a time."""
    chunk_bytes = CHUNK_BYTES  # read at call time, so that a test can make chunks small
    next_line, rest = 1, b""
    with open_inbox_file(path) as fh:
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
                data = data[ends[-1] :]
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
    con.execute(f"SET partitioned_write_flush_threshold = {PARTITION_FLUSH_ROWS}")
    if spill_dir:
        con.execute(f"SET temp_directory = '{spill_dir}'")
    return con


def inbox_dates(paths: Iterable[Path], first_day: str = "0001-01-01", last_day: str = "9999-12-31") -> set[str]:
    """UTC dates (YYYY-MM-DD) between `first_day` and `last_day` of the parseable timestamps (of a feedback line: its
    feedback_at) in the given inbox files.

    A file that cannot be read holds no dates: ingest quarantines it, and it must not stop a sensor or a run before that.
    """
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    dates: set[str] = set()
    for path in paths:
        if file_problem(Path(path)):
            continue
        try:
            for batches in line_batches(Path(path)):
                con.register("chunk", pa.Table.from_batches(batches))
                # a timestamp the contract refuses (24:00, +25:00) names no day; the shape test keeps the cast from rolling it over
                rows = con.execute(
                    "SELECT DISTINCT strftime(try_cast(t AS TIMESTAMPTZ), '%Y-%m-%d') FROM (SELECT coalesce(p[1], p[2]) AS t FROM ("
                    "SELECT try(json_extract_string(try(decode(raw)), ['$.timestamp', '$.feedback_at'])) AS p FROM chunk)) "
                    f"WHERE regexp_matches(t, {_sql_str(TIMESTAMP_SHAPE.pattern)})"
                ).fetchall()
                dates.update(d for (d,) in rows if d and first_day <= d <= last_day)
        except READ_ERRORS:
            continue
    return dates


def _in_days(days: list[str] | None) -> str:
    """SQL condition selecting the rows of `days` (all rows when None)."""
    return "true" if days is None else f"day IN (SELECT unnest({_sql_list(days)}))"


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_id(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_sql_str(v) for v in values) + "]::VARCHAR[]"


def _column(rule: FieldRule, form: str) -> str:
    """The SQL column of one typed form (text, number, integer, time) of a field, computed once from its JSON text."""
    return _sql_id(f"{rule.name}:{form}")


def _typed_forms(rule: FieldRule) -> dict[str, str]:
    """SQL for the typed forms of one field that its checks and its lake value read, from its JSON text column."""
    x = _sql_id(rule.name)
    forms = {}
    if rule.kind in ("string", "timestamp"):
        forms["text"] = f"({x} ->> '$')"
    if rule.kind == "timestamp":
        forms["time"] = f"try_cast(({x} ->> '$') AS TIMESTAMPTZ)"
    if {"number", "integer"} & set(rule.types):
        # the JSON text is minified JSON, so only a JSON number casts from text: a string "5" or true stays NULL
        forms["number"] = f"try_cast({x}::VARCHAR AS DOUBLE)"
    if rule.kind == "integer":
        forms["integer"] = f"try_cast({x}::VARCHAR AS BIGINT)"  # exact beyond 2^53, NULL outside int64
    return forms


def _typed_sql(source: str, rules: tuple[FieldRule, ...]) -> str:
    """The query that adds the typed forms of every field of `rules` to `source`, a relation with one JSON text column per field."""
    forms = ", ".join(f"{sql} AS {_column(r, form)}" for r in rules for form, sql in _typed_forms(r).items())
    return f"SELECT *, {forms} FROM ({source})"


def _type_ok(rule: FieldRule) -> str:
    """SQL that is true when a field's JSON text holds one of its JSON Schema types."""
    x = _sql_id(rule.name)
    number = _column(rule, "number")
    tests = {
        "string": f"starts_with({x}, '\"')",
        "number": f"coalesce(isfinite({number}), false)",
        "integer": f"coalesce(isfinite({number}) AND {number} = trunc({number}), false)",
        "array": f"starts_with({x}, '[')",
        "object": f"starts_with({x}, '{{')",
        "boolean": f"{x} IN ('true', 'false')",
    }
    return "(" + " OR ".join(tests[t] for t in rule.types if t != "null") + ")"


def _field_checks(rule: FieldRule) -> list[tuple[str, str]]:
    """(failing condition, reason expression) pairs for one field, in the order record_problems checks them."""
    name, x = rule.name, _sql_id(rule.name)  # the field's JSON text, NULL when absent or null
    present = f"list_contains(keys, {_sql_str(name)})"
    if rule.required:
        absent = [(f"{x} IS NULL", f"CASE WHEN {present} THEN 'bad_type:{name}' ELSE 'missing_field:{name}' END")]
    else:
        absent = [] if rule.nullable else [(f"{x} IS NULL AND {present}", f"'bad_type:{name}'")]
    return absent + [(f"{x} IS NOT NULL AND {cond}", reason) for cond, reason in _value_checks(rule)]


def _value_checks(rule: FieldRule) -> list[tuple[str, str]]:
    """(failing condition, reason expression) pairs on a present, non-null value of one field, over its typed forms."""
    name, spec, x = rule.name, rule.spec, _sql_id(rule.name)
    text, number = _column(rule, "text"), _column(rule, "number")
    checks = []
    if rule.types:
        checks.append((f"NOT {_type_ok(rule)}", f"'bad_type:{name}'"))
    if "minLength" in spec or "maxLength" in spec:
        checks.append(
            (f"length({text}) NOT BETWEEN {spec.get('minLength', 0)} AND {spec.get('maxLength', 2**62)}", f"'bad_length:{name}'")
        )
    if "pattern" in spec:
        reason = PATTERN_REASONS.get(name, f"bad_pattern:{name}")
        checks.append((f"NOT regexp_matches({text}, {_sql_str(spec['pattern'])})", _sql_str(reason)))
    if spec.get("format") == "date-time":
        checks.append(
            (
                f"(NOT regexp_matches({text}, {_sql_str(TIMESTAMP_SHAPE.pattern)}) OR {_column(rule, 'time')} IS NULL)",
                "'bad_timestamp'",
            )
        )
    if "enum" in spec:
        allowed = ", ".join(_sql_str(json.dumps(v)) for v in spec["enum"] if v is not None)
        checks.append((f"{x} NOT IN ({allowed})", f"'bad_enum:{name}'"))
    bounds = [
        f"{number} < {spec['minimum']}" if "minimum" in spec else None,
        f"{number} > {spec['maximum']}" if "maximum" in spec else None,
        f"{_column(rule, 'integer')} IS NULL" if rule.kind == "integer" else None,
    ]
    if any(bounds):
        checks.append(("(" + " OR ".join(b for b in bounds if b) + ")", f"'out_of_range:{name}'"))
    if "items" in spec:
        checks += _item_checks(name, x, spec["items"])
    return checks


_DUCKDB_TYPES = {"string": "VARCHAR", "object": "OBJECT", "array": "ARRAY", "boolean": "BOOLEAN"}


def _item_checks(name: str, x: str, items: dict) -> list[tuple[str, str]]:
    """Checks of an array's items: their type, required properties, property types and enums."""
    checks = []
    if "type" in items:
        checks.append(
            (f"NOT list_has_all([{_sql_str(_DUCKDB_TYPES[items['type']])}], json_type({x}, '$[*]'))", f"'bad_type:{name}'")
        )
    for prop in items.get("required", []):
        checks.append((f"len(json_extract({x}, '$[*].{prop}')) <> json_array_length({x})", f"'missing_field:{name}.{prop}'"))
    for prop, spec in items.get("properties", {}).items():
        if "type" in spec:
            checks.append(
                (
                    f"NOT list_has_all([{_sql_str(_DUCKDB_TYPES[spec['type']])}], json_type({x}, '$[*].{prop}'))",
                    f"'bad_type:{name}.{prop}'",
                )
            )
        if "enum" in spec:
            allowed = _sql_list(json.dumps(v) for v in spec["enum"])
            checks.append(
                (f"NOT list_has_all({allowed}, json_extract({x}, '$[*].{prop}')::VARCHAR[])", f"'bad_enum:{name}.{prop}'")
            )
    return checks


def _value(rule: FieldRule) -> str:
    """SQL for the lake value of one field, from its typed forms."""
    kind = rule.kind
    if kind == "string_list":
        return f"from_json({_sql_id(rule.name)}, '[\"VARCHAR\"]')"
    if kind == "json":
        return _sql_id(rule.name)
    return _column(rule, {"timestamp": "time", "number": "number", "integer": "integer"}.get(kind, "text"))


def _day(rules: tuple[FieldRule, ...]) -> str:
    """SQL for the UTC day (YYYY-MM-DD) of a typed row, from its contract's timestamp field (a call's timestamp, a feedback's feedback_at)."""
    return f"strftime({_column(next(r for r in rules if r.kind == 'timestamp'), 'time')}, '%Y-%m-%d')"


def _content_hash(rules: tuple[FieldRule, ...]) -> str:
    """SQL for the content hash of a typed row: its contract values and extra fields, so key order, spacing and escapes do not count."""
    # DuckDB's own 64-bit hash: several times cheaper than md5 over the text; its values are pinned by a test, because
    # stored hashes must keep matching new ones (a DuckDB that changed them would need the lake rebuilt)
    # the kind only routes a line: a call that says "kind": "call" is the same record as one that leaves it out
    return "printf('%016x', hash(" + ", ".join([f'"{r.name}"' for r in rules if r.name != KIND_FIELD] + ["extra"]) + "))"


def _record_checks(contract: str, first_day: str, last_day: str) -> list[tuple[str, str]]:
    """(failing condition, reason expression) pairs on a whole typed row, after its fields' checks: the day, and for feedback its content."""
    if contract == CALL_CONTRACT:
        return [(f"day NOT BETWEEN '{first_day}' AND '{last_day}'", "'out_of_range:timestamp'")]
    # feedback: any day of the calendar has a partition, but the record must say something
    return [
        (" AND ".join(f"{_sql_id(name)} IS NULL" for name in given_one_of()), f"'{EMPTY_REASON}'"),
        ("coalesce(length(day) <> 10 OR day < '0001', true)", "'out_of_range:feedback_at'"),
    ]


def classify_sql(first_day: str, last_day: str, limits: LineLimits, contract: str = CALL_CONTRACT, source: str = "chunk") -> str:
    """The query that turns a chunk of raw lines into typed rows of a contract, each with a quarantine reason, 'blank' or NULL.

    The chunk (table `source`) has a `screened` column with the reason `screen_lines` found for a line that must not
    reach the parser. Under the call contract a feedback line gets the reason 'feedback': it is classified again, by
    the feedback contract.
    """
    rules = field_rules(contract)
    known = _sql_list(r.name for r in rules)
    structure = json.dumps({r.name: "JSON" for r in rules}).replace("'", "''")
    checks = [c for r in rules for c in _field_checks(r)] + _record_checks(contract, first_day, last_day)
    if contract == CALL_CONTRACT:
        checks.insert(0, (f"({_sql_id(KIND_FIELD)} ->> '$') = '{FEEDBACK_KIND}'", f"'{FEEDBACK_KIND}'"))
    # the order of `judge_line`, so that both give the same first reason
    reason = (
        "CASE WHEN screened IS NOT NULL THEN screened WHEN blank THEN 'blank' WHEN line IS NULL THEN 'invalid_utf8' "
        "WHEN s IS NULL THEN CASE WHEN json_valid(line) THEN 'not_an_object' ELSE 'invalid_json' END "
        f"WHEN len(keys) > {int(limits.max_keys)} THEN 'too_many_keys' "
        "WHEN list_contains(keys, '') THEN 'empty_key' "
        "WHEN len(keys) > len(list_distinct(keys)) THEN 'duplicate_key' "
        + " ".join(f"WHEN {cond} THEN {why}" for cond, why in checks)
        + " END"
    )
    # values only of valid rows: a function like from_json would fail on the wrongly typed ones
    values = ", ".join(f'CASE WHEN reason IS NULL THEN {_value(r)} END AS "{r.name}"' for r in rules)
    # sorted by key, as the parallel reader's `_extra_sql` writes them; read from the record as a map, because a key
    # in a JSON path (`$."*"`, `$."a.b"`) may be taken for a wildcard or a step
    extra = (
        "CASE WHEN members IS NOT NULL THEN '{' || array_to_string(list_transform("
        f"list_sort(list_filter(keys, lambda k: NOT list_contains({known}, k))), "
        "lambda k: to_json(k) || ':' || coalesce(members[k], 'null')), ',') || '}' END"
    )
    members = f"CASE WHEN reason IS NULL AND NOT list_has_all({known}, keys) THEN from_json(line, '\"MAP(VARCHAR, JSON)\"') END"
    # rtrim and trim walk a whole line (0.3 s a 32 MB chunk each); the regex and ltrim stop early. A byte order mark
    # opening a line is dropped (and counted); a line of any Unicode white space is blank.
    fields = f"""
        SELECT line_no, raw, line, bom, blank, screened, s, keys, s.* FROM (
            SELECT *, CASE WHEN s IS NOT NULL THEN json_keys(line) END AS keys FROM (
                SELECT *, CASE WHEN NOT blank AND ltrim(line, '{WHITESPACE}')[1] = '{{'
                               THEN try(from_json(line, '{structure}')) END AS s FROM (
                    SELECT *, coalesce(ltrim(line, {_sql_str(BLANK_CHARS)}) = '', false) AS blank FROM (
                        SELECT line_no, raw, screened, coalesce(starts_with(decoded, '{BOM}'), false) AS bom,
                               CASE WHEN starts_with(decoded, '{BOM}') THEN substr(decoded, 2) ELSE decoded END AS line
                        FROM (SELECT line_no, raw, screened,
                                     CASE WHEN screened IS NULL THEN regexp_replace(try(decode(raw)), '\\r?\\n$', '') END AS decoded
                              FROM {source})))))
    """
    return f"""
    WITH typed AS (
        SELECT *, {_day(rules)} AS day FROM ({_typed_sql(fields, rules)})
    ), judged AS (
        SELECT *, {reason} AS reason FROM typed
    ), valued AS (
        SELECT *, {members} AS members FROM judged
    )
    SELECT line_no, reason, bom, blank AND ltrim(line, '{WHITESPACE}') <> '' AS odd_blank,
           CASE WHEN reason IS NOT NULL THEN raw END AS bad_raw, day, {values}, {extra} AS extra
    FROM valued
    """


def screen_lines(raw: pa.Array, first_day: str, last_day: str, limits: LineLimits) -> pa.Array:
    """Per line of a chunk, the reason `judge_line` gives a line DuckDB must not parse, else NULL.

    Those are lines over the size or depth limits. Cheap byte tests pick the few candidates; only those are judged in Python.
    """
    offsets = np.frombuffer(raw.buffers()[1], np.int32)[raw.offset : raw.offset + len(raw) + 1]
    data = np.frombuffer(raw.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    starts = offsets[:-1] - offsets[0]
    sizes = np.diff(offsets)
    candidates = sizes > limits.max_bytes
    if len(data):
        openers = np.add.reduceat((data == _OPEN_BRACKET) | (data == _OPEN_BRACE), starts, dtype=np.int64)
        candidates |= (openers > limits.max_depth) & (sizes > 0)
    reasons: list[str | None] = [None] * len(raw)
    for i in np.flatnonzero(candidates):
        reasons[i] = judge_line(raw[i].as_py(), first_day, last_day, limits).reason
    return pa.array(reasons, pa.string())


_OPEN_BRACKET, _OPEN_BRACE = ord("["), ord("{")


def clean_file_sql(
    path: Path,
    first_day: str,
    last_day: str,
    non_null: Iterable[str] = (),
    unknown: Iterable[str] = (),
    max_depth: int = LineLimits.max_depth,
    contract: str = CALL_CONTRACT,
) -> str:
    """The query that types every record of a file of one contract with DuckDB's own parallel JSON reader, and fails on a
    row that breaks a rule.

    `non_null` names optional fields that every record of the file gives, so that a NULL from the reader is a null;
    `unknown` names the keys outside the contract that records of the file give, which go to `extra`; a value that
    opens `max_depth` arrays or objects or more may nest too deep, and sends the file to the line checker.
    """
    # The reader cannot see undeclared keys, tell a null from an absent key, or number lines: `screen_sql` finds the keys
    # and counts them, and a file whose rows need line numbers (quarantine, conflicts) is parsed line by line. Rows are
    # not numbered here at all: a row number serializes the reader and cost more than everything else.
    rules = field_rules(contract)
    unknown = sorted(unknown)
    columns = "{" + ", ".join(f"{_sql_str(name)}: 'JSON'" for name in [r.name for r in rules] + unknown) + "}"
    reader = (
        f"SELECT {', '.join(_sql_id(r.name) for r in rules)}, {_extra_sql(unknown)} AS extra "
        f"FROM read_json({_sql_str(str(path))}, format='newline_delimited', columns={columns}, auto_detect=false)"
    )
    dirty = " OR ".join(
        [f"{_sql_id(r.name)} IS NULL" for r in rules if r.required or r.name in non_null]
        + [f"({_sql_id(r.name)} IS NOT NULL AND {cond})" for r in rules for cond, _ in _value_checks(r)]
        + [cond for cond, _ in _record_checks(contract, first_day, last_day)]
        + [_may_nest_deep(_sql_id(r.name), max_depth) for r in rules if r.kind == "json"]
        + [_may_nest_deep("extra", max_depth)]
    )
    values = ", ".join(f'{_value(r)} AS "{r.name}"' for r in rules)
    # Each step is its own projection, so that a typed form is computed once for both checks and values (a WHERE would be
    # pushed below them and compute everything twice), and the error stops the query before a value is converted: failing
    # on the first dirty row keeps a dirty file from being written at all.
    return f"""
    SELECT checked_day AS day, {values}, extra FROM (
        SELECT *, CASE WHEN {dirty} THEN error('a row breaks the contract') ELSE day END AS checked_day FROM (
            SELECT *, {_day(rules)} AS day FROM ({_typed_sql(reader, rules)})))
    """


def _may_nest_deep(x: str, max_depth: int) -> str:
    """SQL that is true when a JSON value opens `max_depth` arrays or objects or more; only long values are counted."""
    text = f"{x}::VARCHAR"
    return (
        f"coalesce(strlen({text}) >= {2 * max_depth} AND "
        f"strlen({text}) - strlen(replace(replace({text}, '[', ''), '{{', '')) >= {max_depth}, false)"
    )


def _extra_sql(unknown: list[str]) -> str:
    """SQL for the `extra` JSON object of a row from the reader's columns of the keys outside the contract, sorted by key."""
    if not unknown:
        return "NULL::VARCHAR"
    # an absent key (or a null, which `_values_given` rules out) is NULL, and concat_ws skips it; the text is the one
    # the line checker writes for the same record, so that both give the same content hash
    members = ", ".join(f"to_json({_sql_str(name)}) || ':' || {_sql_id(name)}::VARCHAR" for name in unknown)
    return f"nullif('{{' || concat_ws(',', {members}) || '}}', '{{}}')"


def screen_sql(path: Path) -> str:
    """The query that counts a file's records (key NULL) and the records that give each top-level key.

    With each count come the longest record in bytes and the bytes of all records (only the NULL key's row counts
    each record once).
    """
    # one GROUP BY over the unnested keys measured 3x cheaper than list functions on each record's key list; a key given
    # twice in a record is not seen here, but the reader of `clean_file_sql` fails on a duplicate contract key
    return (
        f"SELECT key, count(*), max(bytes), sum(bytes) FROM ("
        f"SELECT unnest(list_prepend(NULL::VARCHAR, json_keys(json))) AS key, strlen(json) AS bytes "
        f"FROM read_ndjson_objects({_sql_str(str(path))})) GROUP BY key"
    )


def _only_records(path: Path, records: int, record_bytes: int) -> bool:
    """Whether a file holds nothing but its records, one per line: no blank line, no white space around a record.

    The reader skips such bytes, and some (a vertical tab before a record) are no JSON white space: a file that has
    them goes to the line checker. A plain file's size says so, a gzip file's by the size its trailer records.
    """
    expected = record_bytes + records  # each record and its newline
    if path.name.endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int.from_bytes(fh.read(4), "little") == expected % 2**32
    size = path.stat().st_size
    if size == expected - 1 and records:  # the last line may lack its newline
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    return size == expected


def _non_null_optional(rules: tuple[FieldRule, ...]) -> list[FieldRule]:
    """The optional fields that may be absent but not null."""
    return [r for r in rules if not r.required and not r.nullable]


@dataclass
class IngestResult:
    """What one ingest run did: counts for metadata, and where every line went."""

    files: int = 0  # inbox files read: new, changed, or not yet ingested whole
    lines: int = 0  # non-blank lines read
    new: int = 0  # rows added to the lake
    duplicates: int = 0  # valid lines whose record the lake (or an earlier line) already holds
    quarantined: Counter = field(default_factory=Counter)  # reason -> lines
    pending: int = 0  # valid new rows of days this run did not materialize
    lines_by_line: int = 0  # lines of files or 32 MB pieces that held a bad line or a conflict, checked one by one
    bad_files: dict[str, str] = field(default_factory=dict)  # source file -> bad_file:<why>, for files quarantined whole
    odd_blank_lines: int = 0  # blank lines of white space other than spaces and tabs (a vertical tab, a lone BOM)
    bom_lines: int = 0  # lines that opened with a byte order mark, which was dropped
    files_skipped: int = 0  # inbox files the manifest records as ingested, unchanged: not read
    files_kept: int = 0  # files read but left in the inbox: rows of days not stored yet, unreadable, or changed while read
    archived: int = 0  # files moved to inbox/processed/<day>/
    inbox_expired: list[str] = field(default_factory=list)  # processed/<day>/ folders deleted by the inbox retention
    debris_removed: int = 0  # staging folders of killed ingests removed
    partitions: dict[str, int] = field(default_factory=dict)  # day -> rows stored after the run
    tasks: dict[str, int] = field(default_factory=dict)  # task -> rows stored in those partitions
    preview: list[dict] = field(default_factory=list)  # a few of the new rows
    feedback_new: int = 0  # feedback records added to the lake
    feedback_duplicates: int = 0  # feedback lines whose record the lake (or an earlier line) already holds
    feedback_quarantined: int = 0  # feedback lines the feedback contract refused (also counted in `quarantined`, by reason)
    feedback_waiting: int = 0  # feedback records in the lake whose log_id has no call in the lake yet
    stale_days: list[str] = field(default_factory=list)  # other days than the run's with a call that got new feedback

    @property
    def stored(self) -> int:
        return sum(self.partitions.values())

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


@dataclass(frozen=True)
class _Kind:
    """How one record kind is staged and stored: its contract, lake table and columns, and its staging tables."""

    contract: str
    table: str
    schema: pa.Schema
    keys: str  # staging table of its rows' keys
    fate: str  # table of their fates
    identity: str  # the columns that tell one record from another: a call's log_id; for feedback, all of its content

    @property
    def rules(self) -> tuple[FieldRule, ...]:
        return field_rules(self.contract)

    @property
    def lake_columns(self) -> str:
        return ", ".join(f'"{name}"' for name in self.schema.names)

    @property
    def new_columns(self) -> str:
        """The lake columns of typed rows: contract defaults fill absent fields."""
        return ", ".join(
            f'coalesce("{r.name}", {_sql_str(r.spec["default"])}) AS "{r.name}"' if "default" in r.spec else f'"{r.name}"'
            for r in self.rules
        )


CALLS = _Kind(CALL_CONTRACT, TABLE, RAW_LOG_SCHEMA, "keys", "fate", "log_id")
FEEDBACK = _Kind(FEEDBACK_CONTRACT, FEEDBACK_TABLE, FEEDBACK_SCHEMA, "fb_keys", "fb_fate", "log_id, content_hash")


@dataclass
class _Stager:
    """Writes the valid rows of inbox files, a unit (a whole file or one chunk of it) at a time, as staged lake rows per day.

    Only each row's key (unit, line, log_id, content hash, day) stays in DuckDB, in table `keys`, and only rejected
    lines in table `rejected`: memory does not grow with the rows' text.
    """

    con: duckdb.DuckDBPyConnection
    work: Path
    sources: list[str]  # source_file of each file index
    first_day: str
    last_day: str
    ingested_at: str
    limits: LineLimits = field(default_factory=LineLimits)
    fast: dict[tuple[int, int], bool] = field(default_factory=dict)  # fast-path unit -> covers its whole file
    lines_by_line: int = 0  # lines staged by `_stage_lines`
    odd_blank_lines: int = 0  # blank lines of white space other than JSON's (a vertical tab, a no-break space)
    bom_lines: int = 0  # lines that opened with a byte order mark, dropped before parsing

    def __post_init__(self):
        for kind in (CALLS, FEEDBACK):
            self.con.execute(
                f"CREATE TABLE {kind.keys} (file_idx INTEGER, unit_line BIGINT, line_no BIGINT, log_id VARCHAR, content_hash VARCHAR, day VARCHAR)"
            )
            (self.work / kind.table).mkdir()
        self.con.execute("CREATE TABLE rejected (file_idx INTEGER, line_no BIGINT, reason VARCHAR, raw BLOB, feedback BOOLEAN)")
        self.line_query = classify_sql(self.first_day, self.last_day, self.limits)
        self.feedback_query = classify_sql(self.first_day, self.last_day, self.limits, FEEDBACK_CONTRACT, "feedback_chunk")

    def unit_dir(self, file_idx: int, unit_line: int, kind: _Kind = CALLS) -> Path:
        return self.work / kind.table / f"{file_idx}-{unit_line}"

    def stage_file(self, file_idx: int, path: Path) -> None:
        """Stage a file the fast way when it is clean; otherwise chunk by chunk, so that only chunks with bad lines go line by line."""
        if self._stage_clean(file_idx, 1, path):
            self.fast[(file_idx, 1)] = True
            return
        piece = self.work / "chunk.jsonl"
        for chunk in (pa.Table.from_batches(batches) for batches in line_batches(path)):
            first = chunk["line_no"][0].as_py()
            piece.write_bytes(b"".join(chunk["raw"].to_pylist()))
            if self._stage_clean(file_idx, first, piece):
                self.fast[(file_idx, first)] = False
            else:
                self._stage_lines(file_idx, chunk)

    def restage_by_line(self, file_idx: int, unit_line: int, path: Path) -> None:
        """Stage a fast-path unit again line by line, for the true line numbers that conflicts need."""
        whole = self.fast.pop((file_idx, unit_line))
        for kind in (CALLS, FEEDBACK):
            self.con.execute(f"DELETE FROM {kind.keys} WHERE file_idx = $f AND unit_line = $u", {"f": file_idx, "u": unit_line})
            shutil.rmtree(self.unit_dir(file_idx, unit_line, kind), ignore_errors=True)
        for chunk in (pa.Table.from_batches(batches) for batches in line_batches(path)):
            if whole or chunk["line_no"][0].as_py() == unit_line:
                self._stage_lines(file_idx, chunk)

    def _copy(self, file_idx: int, unit_line: int, typed: str, kind: _Kind = CALLS) -> int:
        """Write typed rows (day, contract values, extra) of one unit as lake rows, partitioned by day; returns the row count."""
        target = self.unit_dir(file_idx, unit_line, kind)
        (count,) = self.con.execute(f"""
            COPY (SELECT {kind.lake_columns}, day FROM (
                SELECT {kind.new_columns}, extra, {_content_hash(kind.rules)} AS content_hash,
                       {_sql_str(self.sources[file_idx])} AS source_file, TIMESTAMPTZ '{self.ingested_at}' AS ingested_at, day
                FROM ({typed})))
            TO '{target}' ({PARQUET}, PARTITION_BY (day))
        """).fetchall()[0]
        return count

    def _stage_clean(self, file_idx: int, unit_line: int, path: Path) -> bool:
        """Stage a file with the parallel reader when every record in it is valid; False, with nothing kept, otherwise."""
        kind, limits = CALLS, self.limits
        folder = self.unit_dir(file_idx, unit_line, kind)
        try:
            screened = {key: rest for key, *rest in self.con.execute(screen_sql(path)).fetchall()}
            lines, biggest, total = screened.pop(None, (0, 0, 0))
            counts = {key: n for key, (n, *_) in screened.items()}
            # a file of feedback alone (every record names a kind and a feedback_at, none a timestamp) is one of feedback;
            # a file of calls and feedback goes to the line checker, which tells them apart line by line
            if lines and counts.get(KIND_FIELD) == lines and counts.get("feedback_at") == lines and "timestamp" not in counts:
                kind = FEEDBACK
                folder = self.unit_dir(file_idx, unit_line, kind)
            rules = _non_null_optional(kind.rules)
            unknown = {key: n for key, n in counts.items() if key not in {r.name for r in kind.rules}}
            # a record over a limit or with an empty key needs the line checker's reason; with at most max_keys
            # distinct keys in the file, no record has more
            if len(unknown) > MAX_UNKNOWN_KEYS or len(counts) > limits.max_keys or "" in counts:
                return False
            if (biggest or 0) + 1 > limits.max_bytes or not _only_records(path, lines, total or 0):
                return False
            given = [counts.get(r.name, 0) for r in rules]
            # where every record gives a field, the reader's NULL can only be an explicit null
            everywhere = [r.name for r, n in zip(rules, given) if n == lines]
            sql = clean_file_sql(path, self.first_day, self.last_day, everywhere, unknown, limits.max_depth, kind.contract)
            rows = self._copy(file_idx, unit_line, sql, kind)
        except duckdb.InvalidInputException:  # a line that is not a JSON object, not UTF-8, gives a key twice, or breaks a rule
            shutil.rmtree(folder, ignore_errors=True)
            return False
        except duckdb.BinderException:  # a key the reader cannot declare: empty, or a case variant of another
            return False
        if not rows:
            return lines == 0
        staged = f"read_parquet('{folder}/*/*.parquet', hive_partitioning=true, hive_types={{'day': VARCHAR}})"
        partly = [(r, n) for r, n in zip(rules, given) if 0 < n < lines]
        if rows != lines or not self._values_given(path, staged, partly, unknown):
            shutil.rmtree(folder)
            return False
        self.con.execute(f"INSERT INTO {kind.keys} SELECT {file_idx}, {unit_line}, NULL, log_id, content_hash, day FROM {staged}")
        return True

    def _values_given(self, path: Path, staged: str, fields: list[tuple[FieldRule, int]], unknown: dict[str, int]) -> bool:
        """Whether each field and each key outside the contract holds as many values as records give it (the reader reads a null as absent)."""
        # a field stored as read is counted in the staged rows; one that gets a default must be read again
        stored = [(r, n) for r, n in fields if "default" not in r.spec]
        reread = [(r, n) for r, n in fields if "default" in r.spec]
        counts: list[int] = []
        if stored:
            counts += self.con.execute(
                f"SELECT {', '.join(f'count({_sql_id(r.name)})' for r, _ in stored)} FROM {staged}"
            ).fetchall()[0]
        if reread:
            columns = "{" + ", ".join(f"{_sql_str(r.name)}: 'JSON'" for r, _ in reread) + "}"
            counts += self.con.execute(
                f"SELECT {', '.join(f'count({_sql_id(r.name)})' for r, _ in reread)} "
                f"FROM read_json({_sql_str(str(path))}, format='newline_delimited', columns={columns}, auto_detect=false)"
            ).fetchall()[0]
        if counts != [n for _, n in stored + reread]:
            return False
        if not unknown:
            return True
        kept = self.con.execute(
            f"SELECT key, count(*) FROM (SELECT unnest(json_keys(extra)) AS key FROM {staged}) GROUP BY key"
        ).fetchall()
        return dict(kept) == unknown

    def _stage_lines(self, file_idx: int, chunk: pa.Table) -> None:
        """Stage one chunk line by line: each line with its number, rejected ones with their reason and bytes."""
        first = chunk["line_no"][0].as_py()
        screened = pa.chunked_array(
            [screen_lines(part, self.first_day, self.last_day, self.limits) for part in chunk["raw"].chunks], pa.string()
        )
        self.con.register("chunk", chunk.append_column("screened", screened))
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE judged AS {self.line_query}")
        self.con.execute(
            f"INSERT INTO rejected SELECT {file_idx}, line_no, reason, bad_raw, false FROM judged "
            f"WHERE reason IS NOT NULL AND reason NOT IN ('blank', '{FEEDBACK_KIND}')"
        )
        odd, bom, feedback = self.con.execute(
            f"SELECT count(*) FILTER (odd_blank), count(*) FILTER (bom), count(*) FILTER (reason = '{FEEDBACK_KIND}') FROM judged"
        ).fetchall()[0]
        self.odd_blank_lines += odd
        self.bom_lines += bom
        self._keep_valid(file_idx, first, "judged", CALLS)
        if feedback:  # only those lines are parsed again, by the feedback contract
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE feedback_chunk AS SELECT line_no, raw, screened FROM chunk "
                f"SEMI JOIN (SELECT line_no FROM judged WHERE reason = '{FEEDBACK_KIND}') USING (line_no)"
            )
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE feedback_judged AS {self.feedback_query}")
            self.con.execute(
                f"INSERT INTO rejected SELECT {file_idx}, line_no, reason, bad_raw, true FROM feedback_judged WHERE reason IS NOT NULL"
            )
            self._keep_valid(file_idx, first, "feedback_judged", FEEDBACK)
        self.lines_by_line += chunk.num_rows
        self.con.unregister("chunk")

    def _keep_valid(self, file_idx: int, first: int, judged: str, kind: _Kind) -> None:
        """Record the keys of a judged chunk's valid rows of one kind, and write those rows as staged lake rows."""
        self.con.execute(
            f"INSERT INTO {kind.keys} SELECT {file_idx}, {first}, line_no, log_id, {_content_hash(kind.rules)}, day "
            f"FROM {judged} WHERE reason IS NULL"
        )
        self._copy(
            file_idx,
            first,
            f"SELECT * EXCLUDE (line_no, reason, bad_raw, bom, odd_blank) FROM {judged} WHERE reason IS NULL",
            kind,
        )

    def drop_file(self, file_idx: int) -> None:
        """Forget whatever was staged of a file that turned out unreadable part way."""
        for table in (CALLS.keys, FEEDBACK.keys, "rejected"):
            self.con.execute(f"DELETE FROM {table} WHERE file_idx = $f", {"f": file_idx})
        for unit in [key for key in self.fast if key[0] == file_idx]:
            del self.fast[unit]
        for kind in (CALLS, FEEDBACK):
            for folder in (self.work / kind.table).glob(f"{file_idx}-*"):
                shutil.rmtree(folder)


def ingest(
    settings: Settings, days: Iterable[str] | None = None, last_day: str | None = None, run_id: str | None = None
) -> IngestResult:
    """Ingest the inbox files new or changed since the manifest last recorded them: store the new valid records of `days`
    (default: all), quarantine the bad lines and files, then record, archive and expire the files ingested whole.

    Runs on one data dir are serialized by the `ingest` lock, so each decides what is new from the lake the last one left.
    """
    last_day = last_day or datetime.now(UTC).date().isoformat()
    first_day = date.fromisoformat(settings.partitions_start).isoformat()
    run_id = run_id or uuid.uuid4().hex
    with hold(settings.root, "ingest"):
        debris = _sweep_debris(settings)
        entries = manifest.load(settings.state_dir)
        inbox = settings.inbox_dir
        listed = {path: path.relative_to(inbox).as_posix() for path in inbox_entries(inbox)}
        files, known, seen = [], [], {}
        for path, source in listed.items():
            st = os.lstat(path) if file_problem(path) is None else None
            if st is not None and manifest.is_ingested(entries, source, path, st):
                known.append(source)
            else:
                files.append(path)
                seen[len(files) - 1] = st
        # the manifest's content hashes are taken while DuckDB reads the files: hashlib lets go of the GIL
        with ThreadPoolExecutor(1) as hasher, scratch_dir(settings.root, "ingest") as work:
            digests = {i: hasher.submit(_digest, path) for i, path in enumerate(files) if seen[i] is not None}
            con = _connect(settings, str(work / "spill"))
            sources = [listed[p] for p in files]
            stager = _Stager(con, work, sources, first_day, last_day, datetime.now(UTC).isoformat(), settings.line_limits)
            result, whole = _ingest(stager, settings, files, days)
            mark_stale(settings, result.stale_days, run_id)
            result.lines_by_line = stager.lines_by_line
            result.odd_blank_lines = stager.odd_blank_lines
            result.bom_lines = stager.bom_lines
            con.close()
            done = _record(entries, settings, files, whole, seen, {i: d.result() for i, d in digests.items()}, run_id)
        result.files_skipped = len(known)
        result.files_kept = len(files) - len(done)
        result.debris_removed = debris
        present = set(listed.values())
        for source in [s for s, e in entries.items() if e.archived is None and s not in present]:
            del entries[source]  # gone from the inbox: nothing left to skip
        result.inbox_expired = _expire_processed(settings, entries)
        if settings.archive_inbox:
            result.archived = _archive(settings, entries, known + done)
        else:
            manifest.save(entries, settings.state_dir)
    return result


def _sweep_debris(settings: Settings) -> int:
    """Remove what killed ingests left: their scratch folders, and the staging folders older versions kept in the lake."""
    removed = len(sweep(settings.root, "ingest"))
    for legacy in settings.lake_dir.glob(".ingest-*") if settings.lake_dir.is_dir() else []:
        shutil.rmtree(legacy, ignore_errors=True)
        removed += 1
    return removed


def _digest(path: Path) -> str | None:
    """A file's SHA-256, or None when it cannot be read (it is then quarantined, not recorded)."""
    try:
        return manifest.file_sha256(path)
    except OSError:
        return None


def _record(
    entries: dict[str, manifest.Entry],
    settings: Settings,
    files: list[Path],
    whole: list[int],
    seen: dict[int, os.stat_result | None],
    digests: dict[int, str | None],
    run_id: str,
) -> list[str]:
    """Add the files whose every record was stored (or is a duplicate) to the manifest entries; returns their sources.

    A file that changed while it was read and hashed is left out: the next run reads it again.
    """
    now = datetime.now(UTC)
    done = []
    for file_idx in whole:
        path, before, digest = files[file_idx], seen[file_idx], digests.get(file_idx)
        try:
            after = os.lstat(path)
        except OSError:
            continue
        if (
            before is None
            or digest is None
            or (after.st_size, after.st_mtime_ns, after.st_ino)
            != (
                before.st_size,
                before.st_mtime_ns,
                before.st_ino,
            )
        ):
            continue
        source = _source_name(settings, path)
        entries[source] = manifest.Entry(source, after.st_size, after.st_mtime_ns, digest, now, run_id)
        done.append(source)
    return done


def _archive(settings: Settings, entries: dict[str, manifest.Entry], sources: list[str]) -> int:
    """Move ingested files to processed/<day>/, once the manifest names where each goes; returns how many moved.

    The manifest is written first: a run killed between the two finds the files still in the inbox, recorded, and moves them.
    """
    day = datetime.now(UTC).date().isoformat()
    moves = []
    for source in sources:
        entry = entries[source]
        target = Path(PROCESSED_DIR, day, source)
        if (settings.inbox_dir / target).exists():  # the same name ingested again today: keep both
            target = target.with_name(f"{entry.sha256[:12]}-{target.name}")
        entry.archived = target.as_posix()
        moves.append((settings.inbox_dir / source, settings.inbox_dir / target))
    manifest.save(entries, settings.state_dir)
    moved = 0
    for src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dst)  # one filesystem: a rename
            moved += 1
        except FileNotFoundError:  # removed by hand meanwhile
            continue
    return moved


def _expire_processed(settings: Settings, entries: dict[str, manifest.Entry]) -> list[str]:
    """Delete the processed/<day>/ folders older than the inbox retention, and their manifest entries; returns the days."""
    keep = settings.inbox_retention_days
    base = settings.inbox_dir / PROCESSED_DIR
    if not keep or not base.is_dir():
        return []
    cutoff = (datetime.now(UTC).date() - timedelta(days=keep)).isoformat()
    expired = sorted(p.name for p in base.iterdir() if p.is_dir() and _is_day(p.name) and p.name < cutoff)
    for day in expired:
        shutil.rmtree(base / day)
    gone = tuple(f"{PROCESSED_DIR}/{day}/" for day in expired)
    for source in [s for s, e in entries.items() if e.archived and e.archived.startswith(gone)]:
        del entries[source]
    return expired


def _is_day(name: str) -> bool:
    try:
        return date.fromisoformat(name).isoformat() == name
    except ValueError:
        return False


def _stage_or_refuse(stager: _Stager, file_idx: int, path: Path, restage_unit: int | None = None) -> str | None:
    """Stage one inbox file (or restage one of its units); the `bad_file:<why>` reason, with nothing kept, when it cannot be read."""
    problem = file_problem(path)
    if problem is None:
        try:
            if restage_unit is None:
                stager.stage_file(file_idx, path)
            else:
                stager.restage_by_line(file_idx, restage_unit, path)
            return None
        except READ_ERRORS as exc:
            problem = read_problem(exc)
    stager.drop_file(file_idx)
    return problem


def _ingest(stager: _Stager, settings: Settings, files: list[Path], days) -> tuple[IngestResult, list[int]]:
    """Stage the files, decide each row's fate, write quarantine and partitions; with the indices of the files ingested whole."""
    con = stager.con
    result = IngestResult(files=len(files))
    bad: dict[int, str] = {}  # file index -> bad_file:<why>
    for file_idx, path in enumerate(files):
        problem = _stage_or_refuse(stager, file_idx, path)
        if problem:
            bad[file_idx] = problem
    result.lines = con.execute(
        "SELECT (SELECT count(*) FROM keys) + (SELECT count(*) FROM fb_keys) + (SELECT count(*) FROM rejected)"
    ).fetchall()[0][0]

    # only the partitions the staged rows fall in: a record is a duplicate of one stored on its own day
    existing = _lake_files(settings, CALLS, con.execute("SELECT DISTINCT day FROM keys ORDER BY day").fetchall())
    _decide_fates(con, existing)
    # a conflict needs true line numbers, to name the line and to know which of a unit's records came first
    redo = con.execute(
        "SELECT DISTINCT file_idx, unit_line FROM fate WHERE fate = 'conflicting_duplicate' AND line_no IS NULL ORDER BY ALL"
    ).fetchall()
    for file_idx, unit_line in redo:
        if file_idx not in bad:
            problem = _stage_or_refuse(stager, file_idx, files[file_idx], unit_line)
            if problem:  # it changed since it was first read
                bad[file_idx] = problem
    if redo:
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
    for reason, count in con.execute("SELECT reason, count(*) FROM rejected GROUP BY reason").fetchall():
        result.quarantined[reason] += count
    # feedback is stored whatever days the run stores: no partition of the daily assets is its own
    _decide_feedback_fates(con, _lake_files(settings, FEEDBACK, con.execute("SELECT DISTINCT day FROM fb_keys").fetchall()))
    result.feedback_new, result.feedback_duplicates, result.feedback_quarantined = con.execute(
        "SELECT count(*) FILTER (fate = 'new'), count(*) FILTER (fate = 'duplicate'), "
        "(SELECT count(*) FROM rejected WHERE feedback) FROM fb_fate"
    ).fetchall()[0]
    result.quarantined.update(bad.values())
    result.bad_files = {printable_name(stager.sources[i]): reason for i, reason in sorted(bad.items())}

    _write_quarantine(stager, settings, files, bad)
    _write_partitions(stager, settings, wanted, result)
    _swap_partitions(stager, settings, FEEDBACK, None)
    _link_feedback(con, settings, wanted, result)
    return result, [i for i in range(len(files)) if i not in _unfinished(stager, wanted) | set(bad)]


def _unfinished(stager: _Stager, wanted: list[str] | None) -> set[int]:
    """Files that must be read again: valid new rows of days this run did not store, or lines dated just after the last day."""
    horizon = (date.fromisoformat(stager.last_day) + timedelta(days=FUTURE_GRACE_DAYS)).isoformat()
    rows = stager.con.execute(f"""
        SELECT file_idx FROM fate WHERE fate = 'new' AND NOT {_in_days(wanted)}
        UNION SELECT file_idx FROM (
            SELECT file_idx, strftime(try_cast(try(json_extract_string(try(decode(raw)), '$.timestamp')) AS TIMESTAMPTZ), '%Y-%m-%d') AS day
            FROM rejected WHERE reason = 'out_of_range:timestamp'
        ) WHERE day > '{stager.last_day}' AND day <= '{horizon}'
    """).fetchall()
    return {i for (i,) in rows}


def _lake_files(settings: Settings, kind: _Kind, days: list[tuple[str]]) -> list[Path]:
    """The lake files of one kind's partitions of `days` (rows of one-element tuples, as DuckDB returns them) that exist."""
    return [f for f in (partition_file(settings.lake_dir, kind.table, d) for (d,) in sorted(days)) if f.is_file()]


def _stored_keys(files: list[Path]) -> str:
    """SQL for the log_id and content_hash of every row in the lake `files` (no rows without files)."""
    if not files:
        return "SELECT NULL::VARCHAR AS log_id, NULL::VARCHAR AS content_hash WHERE false"
    return f"SELECT log_id, content_hash FROM read_parquet({_sql_list(map(str, files))})"


def _decide_feedback_fates(con, existing: list[Path]) -> None:
    """Table `fb_fate`: each staged feedback row is new, or a duplicate of the same record in the lake or on an earlier line."""
    # a record sent again has the same feedback_at, so its copy is on the same day: only those partitions are read
    lake = _stored_keys(existing)
    con.execute(f"""
        CREATE OR REPLACE TABLE fb_fate AS
        SELECT k.*, CASE WHEN l.log_id IS NOT NULL OR row_number() OVER (
                    PARTITION BY k.log_id, k.content_hash ORDER BY k.file_idx, k.unit_line, k.line_no) > 1
               THEN 'duplicate' ELSE 'new' END AS fate
        FROM fb_keys k LEFT JOIN (SELECT DISTINCT * FROM ({lake})) l USING (log_id, content_hash)
    """)


def _link_feedback(con, settings: Settings, wanted: list[str] | None, result: IngestResult) -> None:
    """Keep the set of feedback waiting for its call, and name the raw_logs days besides `wanted` whose calls got new
    feedback.

    Those days' settlements are stale; the days of the run are settled by the run itself, as after their new calls.
    The waiting set (state/feedback_waiting.parquet: log_id, records) changes by this run's new calls and new
    feedback only, so a run without new feedback never reads the stored calls; one with new feedback reads their
    log_id column once, for both answers.
    """
    lake, path = settings.lake_dir, settings.state_dir / WAITING_FILE
    calls = [str(partition_file(lake, TABLE, d)) for d in partition_dates(lake, TABLE)]
    stored = (
        f"(SELECT log_id, date FROM read_parquet({_sql_list(calls)}, hive_partitioning = true, hive_types = {{'date': VARCHAR}}))"
    )
    if not calls:
        stored = "(SELECT NULL::VARCHAR AS log_id, NULL::VARCHAR AS date WHERE false)"
    counted = not path.is_file()  # the waiting set is counted from the whole lake, this run's feedback included
    if not counted:
        con.execute("CREATE TEMP TABLE waiting AS SELECT * FROM read_parquet(?)", [str(path)])
    else:
        feedback = [str(partition_file(lake, FEEDBACK_TABLE, d)) for d in partition_dates(lake, FEEDBACK_TABLE)]
        if not feedback:  # no feedback at all: a lake of calls only pays for this listing
            return
        # the first run with feedback in the lake (or after the state was lost) counts it all once
        con.execute(f"""
            CREATE TEMP TABLE waiting AS SELECT log_id, count(*) AS records FROM read_parquet({_sql_list(feedback)})
            ANTI JOIN {stored} USING (log_id) GROUP BY log_id""")
    if result.feedback_new:
        con.execute("CREATE TEMP TABLE fb_new AS SELECT DISTINCT log_id FROM fb_fate WHERE fate = 'new'")
        con.execute(f"CREATE TEMP TABLE fb_called AS SELECT DISTINCT log_id, date FROM {stored} SEMI JOIN fb_new USING (log_id)")
        days = con.execute("SELECT DISTINCT date FROM fb_called ORDER BY date").fetchall()
        result.stale_days = [d for (d,) in days if wanted is None or d not in wanted]
        if not counted:
            con.execute("""
                INSERT INTO waiting SELECT log_id, count(*) FROM fb_fate
                WHERE fate = 'new' AND log_id NOT IN (SELECT log_id FROM fb_called) GROUP BY log_id""")
    # the calls stored by this run end the wait of their feedback
    con.execute(f"DELETE FROM waiting WHERE log_id IN (SELECT log_id FROM fate WHERE fate = 'new' AND {_in_days(wanted)})")
    table = con.sql(
        "SELECT log_id, CAST(sum(records) AS BIGINT) AS records FROM waiting GROUP BY log_id ORDER BY log_id"
    ).to_arrow_table()
    result.feedback_waiting = int(pa.compute.sum(table["records"]).as_py() or 0)
    write_parquet_atomic(table, path)


def _decide_fates(con, existing: list[Path]) -> None:
    """Table `fate`: each staged row is new, a duplicate, or a conflicting duplicate of the lake or an earlier line."""
    # the first record stored under a log_id wins: the lake's, else the inbox's earliest line
    lake_ids = _stored_keys(existing)
    # only log_ids given twice or already stored need the ranking window: over all of 1M new keys it took 0.4 s, this 0.2
    con.execute(f"""
        CREATE OR REPLACE TABLE fate AS
        WITH lake AS ({lake_ids}), contested AS (
            SELECT log_id FROM keys GROUP BY log_id HAVING count(*) > 1
            UNION SELECT log_id FROM lake SEMI JOIN keys USING (log_id)
        ), ranked AS (
            SELECT k.*, l.content_hash AS lake_hash,
                   first_value(k.content_hash) OVER w AS first_hash, row_number() OVER w AS rank
            FROM (SELECT * FROM keys SEMI JOIN contested USING (log_id)) k LEFT JOIN lake l USING (log_id)
            WINDOW w AS (PARTITION BY k.log_id ORDER BY k.file_idx, k.unit_line, k.line_no)
        )
        SELECT file_idx, unit_line, line_no, log_id, content_hash, day,
               CASE WHEN coalesce(lake_hash, first_hash) <> content_hash THEN 'conflicting_duplicate'
                    WHEN lake_hash IS NOT NULL OR rank > 1 THEN 'duplicate' ELSE 'new' END AS fate
        FROM ranked
        UNION ALL
        SELECT file_idx, unit_line, line_no, log_id, content_hash, day, 'new' FROM keys ANTI JOIN contested USING (log_id)
    """)


def _write_quarantine(stager: _Stager, settings: Settings, files: list[Path], bad_files: dict[int, str]) -> None:
    """Rewrite each source file's quarantine file with its rejected lines (one file per source: reruns never duplicate).

    A file that cannot be read gets one entry for the whole file, with no line number and none of its text.
    """
    con = stager.con
    names = {quarantine_name(_source_name(settings, path)) for path in files}
    for file_idx, path in enumerate(files):
        source = _source_name(settings, path)
        target = settings.quarantine_dir / quarantine_name(source)
        legacy = settings.quarantine_dir / (source.replace("/", "__") + ".jsonl")  # the name before names were escaped
        if legacy.name not in names:
            legacy.unlink(missing_ok=True)
        if file_idx in bad_files:
            reason = bad_files[file_idx]
            entry = {
                "source_file": printable_name(source),
                "line_no": None,
                "reason": reason,
                "detail": FILE_DETAILS[reason],
                "raw": "",
            }
            write_jsonl_atomic([entry], target)
            continue
        rows = con.execute(
            "SELECT line_no, reason, raw FROM rejected WHERE file_idx = $i "
            "UNION ALL SELECT line_no, fate, NULL FROM fate WHERE file_idx = $i AND fate = 'conflicting_duplicate' "
            "ORDER BY line_no",
            {"i": file_idx},
        ).fetchall()
        if not rows:
            target.unlink(missing_ok=True)
            continue
        # conflicting lines were valid, so their text was not kept: read those few lines again
        missing = {line_no for line_no, _, raw in rows if raw is None}
        refetched = _read_lines(path, missing) if missing else {}
        entries = []
        for line_no, reason, raw in rows:
            data = raw if raw is not None else refetched[line_no]
            entries.append(
                {
                    "source_file": source,
                    "line_no": line_no,
                    "reason": reason,
                    "detail": _detail(reason, data, stager),
                    "raw": data.decode("utf-8", "replace").rstrip("\r\n"),
                }
            )
        write_jsonl_atomic(entries, target)


FILE_DETAILS = {
    "bad_file:symlink": "the inbox entry is a symbolic link; only regular files in the inbox are read",
    "bad_file:not_a_regular_file": "the inbox entry is not a regular file (a folder, a FIFO, a device or a socket)",
    "bad_file:vanished": "the inbox entry disappeared while it was being read",
    "bad_file:bad_name": "the file's path is not valid UTF-8 (its bad bytes are shown as \\xNN in source_file)",
    "bad_file:unreadable": "the file cannot be read (permissions or an I/O error)",
    "bad_file:not_gzip": "the file is named *.gz but is not gzip data",
    "bad_file:corrupt_gzip": "the gzip data is truncated or corrupt",
}


def quarantine_name(source: str) -> str:
    """The quarantine file name of a source file: its inbox path with `%` and `/` escaped, so two sources never share one."""
    name = source.replace("%", "%25").replace("/", "%2F")
    # a byte that is not UTF-8 (a surrogate in the decoded path) is escaped like `%` and `/`
    name = re.sub("[\udc80-\udcff]", lambda m: f"%{ord(m.group()) - 0xDC00:02X}", name)
    if len(name.encode()) > 200:  # file names stop at 255 bytes; a hash of the whole path keeps long ones apart
        name = name[:100] + "-" + hashlib.sha256(os.fsencode(source)).hexdigest()[:16]
    return name + ".jsonl"


def printable_name(source: str) -> str:
    """A source file name as text: bytes of the path that are not UTF-8 shown as \\xNN."""
    return os.fsencode(source).decode("utf-8", "backslashreplace")


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


def _detail(reason: str, raw: bytes, stager: _Stager) -> str:
    """A human-readable explanation of why a line was quarantined: the line checker's own, or that of a conflict."""
    if reason == "conflicting_duplicate":
        return "a record with this log_id is already stored with different content"
    verdict = judge_line(raw, stager.first_day, stager.last_day, stager.limits)
    return verdict.detail if verdict.reason == reason else reason


def _swap_in(staged: Path, target: Path) -> None:
    """Make a staged lake file the partition file `target`, atomically."""
    remove_stale_temps(target)  # a killed run's, left beside it; the ingest lock keeps every other writer out
    with atomic_path(target) as tmp:
        os.replace(staged, tmp)


def _swap_partitions(stager: _Stager, settings: Settings, kind: _Kind, wanted: list[str] | None) -> list[str]:
    """Swap in each touched partition of a kind: its staged file as is when it holds exactly the day's new rows, else a merge
    with the stored rows; returns the days that got new rows."""
    con = stager.con
    columns = kind.lake_columns
    units = con.execute(f"""
        SELECT day, file_idx, unit_line, count(*) FILTER (fate = 'new'), count(*)
        FROM {kind.fate} WHERE day IN (SELECT day FROM {kind.fate} WHERE fate = 'new' AND {_in_days(wanted)})
        GROUP BY ALL HAVING count(*) FILTER (fate = 'new') > 0 ORDER BY ALL
    """).fetchall()
    new_days = sorted({day for day, *_ in units})
    merges = []
    for d in new_days:
        target = partition_file(settings.lake_dir, kind.table, d)
        parts = [(stager.unit_dir(f, u, kind) / f"day={d}", f, u, new, rows) for day, f, u, new, rows in units if day == d]
        staged = [sorted(folder.glob("*.parquet")) for folder, *_ in parts]
        if not target.is_file() and len(parts) == 1 and parts[0][3] == parts[0][4] and len(staged[0]) == 1:
            _swap_in(staged[0][0], target)
            continue
        # several units, stored rows, or rows that are duplicates: keep each new row once; a unit whose rows are all new
        # is read as is (the join made merging 200k rows in 30 days 2.0 s instead of 1.5)
        merges += [
            f"SELECT {columns}, '{d}' AS day FROM read_parquet({_sql_list(map(str, files))})"
            if new == rows
            else f"SELECT {columns}, '{d}' AS day FROM read_parquet({_sql_list(map(str, files))}) s SEMI JOIN "
            f"(SELECT log_id, content_hash FROM {kind.fate} WHERE fate = 'new' AND file_idx = {f} AND unit_line = {u} AND day = '{d}') n "
            f"USING (log_id, content_hash) QUALIFY row_number() OVER (PARTITION BY {kind.identity}) = 1"
            for (_, f, u, new, rows), files in zip(parts, staged)
        ]
        if target.is_file():
            merges.append(f"SELECT {columns}, '{d}' AS day FROM read_parquet({_sql_str(str(target))})")
    if merges:
        # one partitioned write for every merged day, on all threads: 1.2 s for those 200k rows against 1.5 day by day
        merged = stager.work / f"merged-{kind.table}"
        con.execute(f"COPY ({' UNION ALL '.join(merges)}) TO '{merged}' ({PARQUET}, PARTITION_BY (day))")
        for folder in sorted(merged.glob("day=*")):
            files = sorted(folder.glob("*.parquet"))
            target = partition_file(settings.lake_dir, kind.table, folder.name.removeprefix("day="))
            if len(files) == 1:
                _swap_in(files[0], target)
            else:  # a partitioned write may split a large day into several files; the lake holds one per day
                remove_stale_temps(target)
                with atomic_path(target) as tmp:
                    con.execute(f"COPY (SELECT * FROM read_parquet({_sql_list(map(str, files))})) TO '{tmp}' ({PARQUET})")
    return new_days


def _write_partitions(stager: _Stager, settings: Settings, wanted: list[str] | None, result: IngestResult) -> None:
    """Swap in the touched raw_logs partitions, and report the stored rows of the days of the run."""
    con = stager.con
    new_days = _swap_partitions(stager, settings, CALLS, wanted)
    reported = new_days if wanted is None else wanted
    stored = [
        str(partition_file(settings.lake_dir, TABLE, d))
        for d in reported
        if partition_file(settings.lake_dir, TABLE, d).is_file()
    ]
    if stored:
        lake = f"read_parquet({_sql_list(stored)})"
        result.partitions = dict(
            con.execute(f"SELECT strftime(timestamp, '%Y-%m-%d'), count(*) FROM {lake} GROUP BY 1 ORDER BY 1").fetchall()
        )
        result.tasks = dict(con.execute(f"SELECT task, count(*) FROM {lake} GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
        first = con.execute(
            f"SELECT log_id FROM fate WHERE fate = 'new' AND {_in_days(wanted)} ORDER BY file_idx, unit_line, line_no LIMIT 5"
        ).fetchall()
        preview = con.execute(
            "SELECT log_id, timestamp, task, decision, left(prompt, 60) AS prompt "
            f"FROM {lake} WHERE log_id IN (SELECT unnest({_sql_list(i for (i,) in first)})) ORDER BY list_position({_sql_list(i for (i,) in first)}, log_id)"
        )
        names = [c[0] for c in preview.description]
        result.preview = [dict(zip(names, row)) for row in preview.fetchall()]

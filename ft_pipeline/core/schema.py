"""The input contracts (loaded from the package: calls, and feedback on them) and the lake schema of raw_logs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")

# Lake columns of raw_logs, in order; contract fields keep their names, the rest is lineage.
RAW_LOG_SCHEMA = pa.schema(
    [
        ("log_id", pa.string()),
        ("timestamp", UTC_US),
        ("task", pa.string()),
        ("prompt", pa.string()),
        ("messages", pa.string()),
        ("system_prompt", pa.string()),
        ("output", pa.string()),
        ("final_output", pa.string()),
        ("decision", pa.string()),
        ("quality_score", pa.float64()),
        ("user_rating", pa.float64()),
        ("confidence", pa.float64()),
        ("agent", pa.string()),
        ("user_id", pa.string()),
        ("topic", pa.string()),
        ("reasoning_mode", pa.string()),
        ("model", pa.string()),
        ("adapter_version", pa.string()),
        ("experiment_id", pa.string()),
        ("variant", pa.string()),
        ("attempt", pa.int64()),
        ("failure_reasons", pa.list_(pa.string())),
        ("latency_ms", pa.float64()),
        ("cost_usd", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("metadata", pa.string()),
        ("extra", pa.string()),
        ("content_hash", pa.string()),
        ("source_file", pa.string()),
        ("ingested_at", UTC_US),
    ]
)


@dataclass(frozen=True)
class FieldRule:
    """The contract's rules for one top-level field."""

    name: str
    required: bool
    types: tuple[str, ...]  # JSON Schema types; empty when only an enum constrains the value
    spec: dict[str, Any]  # the field's schema: minLength, maxLength, pattern, enum, minimum, maximum, items, ...

    @property
    def nullable(self) -> bool:
        return "null" in self.types or (not self.types and None in self.spec.get("enum", []))

    @property
    def kind(self) -> str:
        """How the lake stores the value: string, number, integer, timestamp, string_list or json (JSON text)."""
        if self.spec.get("format") == "date-time":
            return "timestamp"
        concrete = [t for t in self.types if t != "null"] or ["string"]  # enum-only fields hold strings
        (kind,) = concrete
        if kind == "array":
            return "string_list" if self.spec.get("items", {}).get("type") == "string" else "json"
        return "json" if kind == "object" else kind


# the contracts shipped in ft_pipeline/contracts/<name>.schema.json: a call (the default kind of a line) and feedback
CALL_CONTRACT = "raw_log"
FEEDBACK_CONTRACT = "feedback"
# the field that names a record's kind, and so its contract; it routes the record and is not stored
KIND_FIELD = "kind"


@cache
def contract(name: str = CALL_CONTRACT) -> dict[str, Any]:
    """One input contract's JSON Schema shipped inside the package (default: the call's)."""
    text = resources.files("ft_pipeline").joinpath("contracts", f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def field_rules(name: str = CALL_CONTRACT) -> tuple[FieldRule, ...]:
    """One rule per property of a contract (default: the call's), in contract order."""
    schema = contract(name)
    required = set(schema["required"])
    rules = []
    for name, spec in schema["properties"].items():
        types = spec.get("type", ())
        rules.append(FieldRule(name, name in required, (types,) if isinstance(types, str) else tuple(types), spec))
    return tuple(rules)


# the contract's task pattern names this reason; any other patterned field gets the generic code
PATTERN_REASONS = {"task": "bad_task_name"}
JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object", type(None): "null"}
INT64_RANGE = (-(2**63), 2**63 - 1)  # integer fields are stored as int64
# hours 00-23, minutes and seconds 00-59, offsets under a day: DuckDB would roll 24:00 or +25:00 over, Python refuses them
TIMESTAMP_SHAPE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?(Z|z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)?$"
)


def json_type(value: Any) -> str:
    """JSON Schema type name of a parsed JSON value (integers count as numbers too)."""
    return "object" if isinstance(value, dict) else JSON_TYPES.get(type(value), "unknown")


def _type_ok(value: Any, types: tuple[str, ...]) -> bool:
    kind = json_type(value)
    if kind == "integer" or (kind == "number" and math.isfinite(value) and value == int(value)):
        return "integer" in types or "number" in types
    return kind in types and (kind != "number" or math.isfinite(value))


def _excerpt(value: str) -> str:
    """A value as an error message may quote it: its start, with any PII in it redacted."""
    from ft_pipeline.core.redaction import redact

    return repr(redact(value[:80])[0])


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    """A contract pattern with JSON Schema's meaning of `$` (the end of the text; Python's also matches before a final newline)."""
    return re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", pattern))


def _parse_timestamp(text: str) -> datetime | None:
    if not TIMESTAMP_SHAPE.fullmatch(text):  # fullmatch: `$` alone would let a trailing newline through
        return None
    try:
        return datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None


def field_problems(rule: FieldRule, record: dict[str, Any]) -> list[tuple[str, str]]:
    """The contract violations of one field of `record`, as (reason code, detail), most basic first."""
    name, spec = rule.name, rule.spec
    if name not in record:
        return [(f"missing_field:{name}", f"required field {name} is absent")] if rule.required else []
    value = record[name]
    if value is None:
        return [] if rule.nullable else [(f"bad_type:{name}", f"{name} must not be null")]
    if rule.types and not _type_ok(value, rule.types):
        return [(f"bad_type:{name}", f"{name} must be {'|'.join(rule.types)}, got {json_type(value)}")]
    problems = []
    if ("minLength" in spec and len(value) < spec["minLength"]) or ("maxLength" in spec and len(value) > spec["maxLength"]):
        problems.append(
            (
                f"bad_length:{name}",
                f"{name} must have {spec.get('minLength', 0)}-{spec.get('maxLength')} characters, has {len(value)}",
            )
        )
    if "pattern" in spec and not _pattern(spec["pattern"]).search(value):
        problems.append(
            (PATTERN_REASONS.get(name, f"bad_pattern:{name}"), f"{name} {_excerpt(value)} must match {spec['pattern']}")
        )
    if spec.get("format") == "date-time" and _parse_timestamp(value) is None:
        problems.append(("bad_timestamp", f"{name} {_excerpt(value)} is not an ISO 8601 date-time"))
    if "enum" in spec and value not in spec["enum"]:
        problems.append((f"bad_enum:{name}", f"{name} {_excerpt(str(value))} must be one of {spec['enum']}"))
    if ("minimum" in spec and value < spec["minimum"]) or ("maximum" in spec and value > spec["maximum"]):
        problems.append((f"out_of_range:{name}", f"{name} {value} must be within [{spec.get('minimum')}, {spec.get('maximum')}]"))
    if rule.kind == "integer" and not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        problems.append((f"out_of_range:{name}", f"{name} {value} does not fit a 64-bit integer"))
    if isinstance(value, list) and "items" in spec:
        problems += _item_problems(name, spec["items"], value)
    return problems


def _item_problems(name: str, items: dict[str, Any], values: list) -> list[tuple[str, str]]:
    """Violations of an array's item rules: item type, required item properties, their types and enums."""
    kind = items.get("type")
    if kind and not all(_type_ok(v, (kind,)) for v in values):
        return [(f"bad_type:{name}", f"every item of {name} must be {kind}")]
    problems = []
    for prop in items.get("required", []):
        if not all(prop in v for v in values):
            problems.append((f"missing_field:{name}.{prop}", f"every item of {name} needs {prop}"))
    for prop, spec in items.get("properties", {}).items():
        present = [v[prop] for v in values if prop in v]
        if "type" in spec and not all(_type_ok(v, (spec["type"],)) for v in present):
            problems.append((f"bad_type:{name}.{prop}", f"{name}[].{prop} must be {spec['type']}"))
        if "enum" in spec and not all(v in spec["enum"] for v in present):
            problems.append((f"bad_enum:{name}.{prop}", f"{name}[].{prop} must be one of {spec['enum']}"))
    return problems


def record_problems(record: Any, name: str = CALL_CONTRACT) -> list[tuple[str, str]]:
    """Every violation of a contract (default: the call's) by one parsed record as (reason code, detail); the first is the quarantine reason."""
    if not isinstance(record, dict):
        return [("not_an_object", f"a record must be a JSON object, got {json_type(record)}")]
    return [problem for rule in field_rules(name) for problem in field_problems(rule, record)]


def validate_record(record: Any) -> list[str]:
    """The reason codes of `record`'s contract violations; empty when it is valid."""
    return [code for code, _ in record_problems(record)]


# A line that holds only these is blank, not a record: Unicode white space and byte order marks.
BLANK_CHARS = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace()) + "\ufeff"
BOM = "\ufeff"
# the two bytes that open a JSON array or object; a line with fewer than max_depth of them cannot nest deeper
_OPENERS = (ord("["), ord("{"))
_CLOSERS = (ord("]"), ord("}"))
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


@dataclass(frozen=True)
class LineLimits:
    """What a line may hold before it is refused unparsed: bytes, nesting depth and top-level keys."""

    max_bytes: int = 8 << 20
    max_depth: int = 64
    max_keys: int = 256


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in one line of JSON, counted without recursion (strings do not count)."""
    import numpy as np

    data = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    steps = np.isin(data, _OPENERS).astype(np.int64) - np.isin(data, _CLOSERS)
    return int(np.cumsum(steps).max(initial=0))


def limit_problem(raw: bytes, limits: LineLimits) -> tuple[str, str] | None:
    """The reason and detail when a line breaks a size or depth limit, checked on its bytes before any parser sees it."""
    if len(raw) > limits.max_bytes:
        return "too_large", f"the line has {len(raw)} bytes, more than the limit of {limits.max_bytes}"
    if raw.count(b"[") + raw.count(b"{") > limits.max_depth:
        depth = nesting_depth(raw)
        if depth > limits.max_depth:
            return "too_deep", f"arrays or objects nest {depth} deep, more than the limit of {limits.max_depth}"
    return None


# a comma before a closing bracket: DuckDB's JSON reader accepts one after the last member (`[1,]`, `{"a": 1,}`)
_TRAILING_COMMA = re.compile(rb",[ \t\r\n]*[\]}]")


def _without_trailing_commas(text: str) -> str:
    """The line as DuckDB's reader takes it (a comma after the last member allowed), rewritten as standard JSON by DuckDB itself."""
    import duckdb

    try:
        (minified,) = duckdb.execute("SELECT json(?::VARCHAR)", [text]).fetchone() or ("",)
    except duckdb.Error as exc:
        raise ValueError(str(exc).splitlines()[0].split("Input:")[0].strip()) from None  # DuckDB quotes the input
    return minified


class _Object(dict):
    """A parsed JSON object that remembers its keys in order, repeats included."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        self.given = [key for key, _ in pairs]


@dataclass(frozen=True)
class LineVerdict:
    """What the contract says of one input line: blank, valid (reason None) or rejected with a reason and a detail."""

    reason: str | None = None
    detail: str = ""
    blank: bool = False
    bom: bool = False
    record: dict[str, Any] | None = None


def judge_line(raw: bytes, first_day: str, last_day: str, limits: LineLimits = LineLimits()) -> LineVerdict:
    """The verdict on one input line (bytes, with or without its newline), exactly as ingest gives it."""
    problem = limit_problem(raw, limits)
    if problem:
        return LineVerdict(*problem)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return LineVerdict("invalid_utf8", "the line is not valid UTF-8")
    text = text.removesuffix("\n").removesuffix("\r")
    bom = text.startswith(BOM)
    text = text.removeprefix(BOM)
    if not text.strip(BLANK_CHARS):
        return LineVerdict(blank=True, bom=bom)
    try:
        if _TRAILING_COMMA.search(raw):
            text = _without_trailing_commas(text)
        record = json.loads(text, object_pairs_hook=_Object)
        # a lone surrogate escape (\ud800) parses in Python, but is no Unicode text: DuckDB's reader refuses it
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        return LineVerdict("invalid_json", f"not valid JSON: {exc}", bom=bom)
    if isinstance(record, dict) and record.get(KIND_FIELD) == "feedback":
        from ft_pipeline.core.feedback import feedback_problem

        problem = feedback_problem(record, limits)
    else:
        problem = record_problem(record, first_day, last_day, limits)
    return LineVerdict(*problem, bom=bom) if problem else LineVerdict(bom=bom, record=record)


def structure_problem(record: Any, limits: LineLimits = LineLimits()) -> tuple[str, str] | None:
    """The reason and detail when a parsed record is no object, or its keys are too many, empty or repeated; None otherwise."""
    if not isinstance(record, dict):
        return "not_an_object", f"a record must be a JSON object, got {json_type(record)}"
    given = getattr(record, "given", list(record))
    if len(given) > limits.max_keys:
        return "too_many_keys", f"the record has {len(given)} keys, more than the limit of {limits.max_keys}"
    if "" in given:
        return "empty_key", 'the record has an empty key ""'
    if len(given) > len(set(given)):
        repeated = sorted({key for key in given if given.count(key) > 1})
        return "duplicate_key", f"the record gives {', '.join(repeated)} more than once, so its content is ambiguous"
    return None


def record_problem(record: Any, first_day: str, last_day: str, limits: LineLimits = LineLimits()) -> tuple[str, str] | None:
    """The quarantine reason and detail of one parsed call record (None when valid): structure, contract, then its day."""
    problem = structure_problem(record, limits)
    if problem:
        return problem
    problems = record_problems(record)
    if problems:
        return problems[0]
    day = timestamp_day(record["timestamp"])
    if day is None or not first_day <= day.isoformat() <= last_day:
        return (
            "out_of_range:timestamp",
            f"timestamp {_excerpt(record['timestamp'])} is outside the daily partitions (from {first_day} to {last_day})",
        )
    return None


def timestamp_day(text: str) -> date | None:
    """The UTC day of a contract timestamp (naive means UTC); None when it is not one or its UTC day is not a date."""
    moment = _parse_timestamp(text)
    if moment is None:
        return None
    try:
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()
    except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC, 0001-01-01T00:00+01:00 in year 0
        return None

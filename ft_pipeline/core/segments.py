"""Segments: the users, agents or topics of a task with a model of their own, named `<task>.<segment>`.

A model key names what a dataset, an adapter and a registered model belong to: a task, or a segment of a task. Segment
keys come from user data, so a value becomes a key only through `segment_key`: itself when it is a safe name, else a
hash of it, and never when it holds PII (a value the settlements redacted)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from ft_pipeline.core.io import TASK_NAME
from ft_pipeline.core.redaction import PII_TYPES, redact
from ft_pipeline.core.schema import RAW_LOG_SCHEMA

SEPARATOR = "."
MODEL_KEY = re.compile(rf"(?P<task>{TASK_NAME.pattern[1:-1]})(?:\.(?P<segment>{TASK_NAME.pattern[1:-1]}))?")
HASHED_PREFIX = "h-"
HASHED = re.compile(r"h-[0-9a-f]{16}")
PLACEHOLDER = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")\]")
# fields a segment can be defined by: the contract's scalar names of who, what and how, not the texts or the ids
SEGMENT_FIELDS = frozenset(
    f.name
    for f in RAW_LOG_SCHEMA
    if f.type == RAW_LOG_SCHEMA.field("agent").type
    and f.name
    not in {"log_id", "task", "prompt", "messages", "system_prompt", "output", "final_output", "decision"}
    | {"metadata", "extra", "content_hash", "source_file"}
)


def segment_key(value: Any) -> str | None:
    """The segment key of a field value: the value when it is a safe name, `h-` and a hash of it otherwise; None for
    no value or one that holds PII (redacted in the settlements, so never a key, nor a path, nor a model name)."""
    if value is None or value == "":
        return None
    text = str(value)
    if PLACEHOLDER.search(text) or redact(text)[0] != text:
        return None
    # a hashed key given back (as `status` shows it) is that key
    if HASHED.fullmatch(text) or (TASK_NAME.fullmatch(text) and not text.startswith(HASHED_PREFIX)):
        return text
    return HASHED_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def segment_keys(values: Iterable[Any]) -> dict[Any, str | None]:
    """The key of each distinct value, computed once per value (a column has few distinct segment values)."""
    return {value: segment_key(value) for value in set(values)}


def model_key(task: str, segment: str | None = None) -> str:
    """The key of a task's model, or of one of its segments' (`<task>.<segment>`)."""
    return checked_model_key(task if segment is None else f"{task}{SEPARATOR}{segment}")


def checked_model_key(key: str) -> str:
    """`key` when it names a task or a task's segment (each part a safe path component), else ValueError."""
    if not isinstance(key, str) or not MODEL_KEY.fullmatch(key):
        raise ValueError(f"model key {key!r} must be a task name or <task>.<segment>, each matching {TASK_NAME.pattern}")
    return key


def split_model_key(key: str) -> tuple[str, str | None]:
    """(task, segment) of a model key; segment is None for a task's own model."""
    match = MODEL_KEY.fullmatch(checked_model_key(key))
    assert match is not None
    return match["task"], match["segment"]


def task_of(key: str) -> str:
    """The task a model key belongs to (itself for a task); what task-wide knobs, such as default system prompts, are keyed by."""
    return split_model_key(key)[0]


def is_segment(key: str) -> bool:
    """Whether a model key names a segment."""
    return split_model_key(key)[1] is not None


def checked_segment_field(name: str) -> str:
    """`name` when segments can be defined by that contract field, else ValueError."""
    if name not in SEGMENT_FIELDS:
        raise ValueError(f"FT_SEGMENT_BY={name!r}: segments are defined by one of {sorted(SEGMENT_FIELDS)}")
    return name

"""Per-task chat datasets from the settlements: examples, a stable hash split, preference pairs, validation, manifest."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ft_pipeline.core.io import checked_name, partition_dates, table_glob, write_json_atomic, write_jsonl_atomic
from ft_pipeline.core.lineage import DATASET_MANIFEST, adapter_watermark, dataset_dir, parse_time

# Used when neither the record nor settings.default_system_prompts give a system prompt.
REASONING_MODE_PROMPTS = {
    "standard": "You are a helpful assistant. Answer clearly and concisely.",
    "chain_of_thought": "You are a helpful assistant. Think through the problem step by step, then give the answer.",
    "multi_step": "You are a helpful assistant. Break the request into steps and work through each one in order.",
    "agent": "You are an autonomous agent. Decide what to do, act, and report the result.",
    "default": "You are a helpful assistant.",
}

# The roles and message keys OpenAI's chat fine-tuning format check accepts ("tool" is the current name of "function").
ROLES = {"system", "user", "assistant", "function", "tool"}
MESSAGE_KEYS = {"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight"}

SETTLEMENT_COLUMNS = (
    "log_id",
    "timestamp",
    "task",
    "prompt",
    "messages",
    "system_prompt",
    "output",
    "final_text",
    "decision",
    "reasoning_mode",
    "weight",
    "ingested_at",
)


def is_validation(log_id: str, val_share: float) -> bool:
    """Whether a record belongs to the validation split: a pure function of its id, so ids never change split."""
    digest = hashlib.sha256(str(log_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_share


def read_settlements(lake_dir: Path, task: str | None = None) -> list[dict[str, Any]]:
    """Settled records (of one task, or all), one per log_id (latest ingest wins), ordered by timestamp then id."""
    import duckdb

    if not partition_dates(lake_dir, "settlements"):
        return []
    columns = ", ".join(SETTLEMENT_COLUMNS)
    where = "WHERE task = $task" if task is not None else ""
    query = f"""
        SELECT {columns} FROM read_parquet($glob, union_by_name = true, hive_partitioning = false)
        {where}
        QUALIFY row_number() OVER (PARTITION BY log_id ORDER BY ingested_at DESC) = 1
        ORDER BY timestamp, log_id
    """
    params: dict[str, Any] = {"glob": table_glob(lake_dir, "settlements")}
    if task is not None:
        params["task"] = task
    with duckdb.connect() as con:
        return con.sql(query, params=params).to_arrow_table().to_pylist()


def drop_duplicate_pairs(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without exact repeats of (prompt, final_text); the first (oldest) copy is kept."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for record in records:
        key = (record.get("prompt") or "", record.get("final_text") or "")
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def prior_turns(record: dict[str, Any]) -> list[dict[str, str]]:
    """The record's earlier chat turns as role/content messages (system turns and the repeated current prompt left out)."""
    raw = record.get("messages")
    try:
        turns = json.loads(raw) if isinstance(raw, str) else (raw or [])
    except json.JSONDecodeError:
        return []
    if not isinstance(turns, list):
        return []
    kept = [
        {"role": t["role"], "content": t["content"]}
        for t in turns
        if isinstance(t, dict) and t.get("role") in ROLES - {"system"} and isinstance(t.get("content"), str)
    ]
    # Some loggers include the current prompt as the last user turn; it must not appear twice.
    if kept and kept[-1]["role"] == "user" and kept[-1]["content"] == record.get("prompt"):
        kept.pop()
    return kept


def system_prompt(record: dict[str, Any], defaults: dict[str, str]) -> str:
    """The record's own system prompt, else the task's default, else the one of its reasoning mode."""
    own = record.get("system_prompt")
    if own and own.strip():
        return own
    raw = record.get("messages")
    try:
        turns = json.loads(raw) if isinstance(raw, str) else []
    except json.JSONDecodeError:
        turns = []
    for turn in turns if isinstance(turns, list) else []:
        if (
            isinstance(turn, dict)
            and turn.get("role") == "system"
            and isinstance(turn.get("content"), str)
            and turn["content"].strip()
        ):
            return turn["content"]
    if defaults.get(record.get("task") or ""):
        return defaults[record["task"]]
    return REASONING_MODE_PROMPTS.get(record.get("reasoning_mode") or "default", REASONING_MODE_PROMPTS["default"])


def prompt_messages(record: dict[str, Any], defaults: dict[str, str]) -> list[dict[str, str]]:
    """System, prior turns and the user prompt of a record: everything before the assistant's answer."""
    return [
        {"role": "system", "content": system_prompt(record, defaults)},
        *prior_turns(record),
        {"role": "user", "content": record.get("prompt") or ""},
    ]


def chat_example(record: dict[str, Any], defaults: dict[str, str]) -> dict[str, Any]:
    """One training line: the chat ending in the approved text, the record's weight and its id."""
    messages = [*prompt_messages(record, defaults), {"role": "assistant", "content": record.get("final_text") or ""}]
    weight = record.get("weight")
    return {"messages": messages, "weight": 1.0 if weight is None else float(weight), "id": str(record["log_id"])}


def preference_pair(record: dict[str, Any], defaults: dict[str, str]) -> dict[str, Any] | None:
    """A TRL preference line from an edited record (the edit chosen over the model's output), else None."""
    final, output = record.get("final_text"), record.get("output")
    if record.get("decision") != "edited" or not final or not output or final == output:
        return None
    return {"prompt": prompt_messages(record, defaults), "chosen": final, "rejected": output, "id": str(record["log_id"])}


def format_errors(examples: Iterable[Any]) -> dict[str, int]:
    """Counts of format errors by type, as in OpenAI's chat fine-tuning data preparation checks."""
    errors: Counter[str] = Counter()
    for ex in examples:
        if not isinstance(ex, dict):
            errors["data_type"] += 1
            continue
        messages = ex.get("messages")
        if not messages or not isinstance(messages, list):
            errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if not isinstance(message, dict):
                errors["data_type"] += 1
                continue
            if "role" not in message or "content" not in message:
                errors["message_missing_key"] += 1
            if any(k not in MESSAGE_KEYS for k in message):
                errors["message_unrecognized_key"] += 1
            if message.get("role") not in ROLES:
                errors["unrecognized_role"] += 1
            content = message.get("content")
            if not content or not isinstance(content, str):
                errors["missing_content"] += 1
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            errors["example_missing_assistant_message"] += 1
        elif not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            errors["last_message_not_assistant"] += 1
        weight = ex.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            errors["invalid_weight"] += 1
    return dict(sorted(errors.items()))


def token_lengths(tokenizer: Any, examples: list[dict[str, Any]]) -> list[int]:
    """Tokens of each example as the model sees it: rendered with the tokenizer's chat template."""
    if not examples:
        return []
    texts = [tokenizer.apply_chat_template(ex["messages"], tokenize=False) for ex in examples]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def token_stats(lengths: list[int], max_seq_len: int) -> dict[str, Any]:
    """Min, mean, p95 and max tokens per example, and how many exceed the training length."""
    if not lengths:
        return {"count": 0, "min": 0, "mean": 0.0, "p95": 0, "max": 0, "over_max_seq_len": 0, "max_seq_len": max_seq_len}
    ordered = sorted(lengths)
    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 2),
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
        "over_max_seq_len": sum(n > max_seq_len for n in ordered),
        "max_seq_len": max_seq_len,
    }


def validation_report(train: list[Any], val: list[Any], min_train_examples: int, stats: dict[str, Any]) -> dict[str, Any]:
    """Whether a dataset may be trained on: format errors, minimum size, split overlap; plus prompt diversity and token statistics."""
    errors = format_errors([*train, *val])
    train_ids = {ex.get("id") for ex in train if isinstance(ex, dict)}
    overlap = sorted(str(i) for i in train_ids & {ex.get("id") for ex in val if isinstance(ex, dict)})
    prompts = [_user_prompt(ex) for ex in [*train, *val]]
    problems = [f"format error {kind}: {n} example(s)" for kind, n in errors.items()]
    if len(train) < min_train_examples:
        problems.append(f"{len(train)} training examples, fewer than the {min_train_examples} required")
    if overlap:
        problems.append(f"{len(overlap)} id(s) in both train and val, e.g. {overlap[:3]}")
    return {
        "valid": not problems,
        "problems": problems,
        "format_errors": errors,
        "n_train": len(train),
        "n_val": len(val),
        "min_train_examples": min_train_examples,
        "split_overlap": len(overlap),
        "distinct_prompt_ratio": round(len(set(prompts)) / len(prompts), 4) if prompts else 0.0,
        "token_stats": stats,
    }


def _user_prompt(example: Any) -> str:
    messages = example.get("messages") if isinstance(example, dict) else None
    users = [m.get("content") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def content_version(paths: Iterable[Path]) -> str:
    """A short content hash of the dataset files: equal data, equal version."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode("utf-8") + b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def build_task_dataset(settings: Any, task: str, tokenizer: Any) -> dict[str, Any]:
    """Write datasets/<task>/{train,val,preferences}.jsonl, validation.json and manifest.json; returns a summary."""
    task = checked_name(task)
    defaults = dict(settings.default_system_prompts)
    records = drop_duplicate_pairs(read_settlements(settings.lake_dir, task))
    records = [r for r in records if r.get("final_text")]
    examples = [chat_example(r, defaults) for r in records]
    in_val = [is_validation(ex["id"], settings.val_share) for ex in examples]
    train = [ex for ex, v in zip(examples, in_val) if not v]
    val = [ex for ex, v in zip(examples, in_val) if v]
    # Preference pairs only from training ids, so that preference training never sees a validation example.
    pairs = [p for r, v in zip(records, in_val) if not v and (p := preference_pair(r, defaults))]

    folder = dataset_dir(settings.datasets_dir, task)
    files = {name: folder / f"{name}.jsonl" for name in ("train", "val", "preferences")}
    write_jsonl_atomic(train, files["train"])
    write_jsonl_atomic(val, files["val"])
    write_jsonl_atomic(pairs, files["preferences"])
    version = content_version(files.values())

    stats = token_stats(token_lengths(tokenizer, examples), settings.max_seq_len)
    report = validation_report(train, val, settings.min_train_examples, stats)
    write_json_atomic({"task": task, "version": version, **report}, folder / "validation.json")

    ingested = [parse_time(r.get("ingested_at")) for r in records]
    watermark = max((t for t in ingested if t is not None), default=None)
    trained_until = parse_time(adapter_watermark(settings.adapters_dir, task))
    new_examples = sum(1 for t in ingested if trained_until is None or (t is not None and t > trained_until))
    manifest = {
        "task": task,
        "version": version,
        "n_train": len(train),
        "n_val": len(val),
        "n_preferences": len(pairs),
        "data_watermark": watermark.isoformat() if watermark else None,
        "built_at": datetime.now(UTC).isoformat(),
    }
    write_json_atomic(manifest, folder / DATASET_MANIFEST)
    return {
        **manifest,
        "new_examples": new_examples,
        "path": str(folder),
        "validation": report,
        "preview": train[:3] or val[:3],
    }

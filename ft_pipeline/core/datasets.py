"""Per-task chat datasets from the settlements: examples, a group-aware train/dev/test split, preference pairs, validation, manifest.

Records are grouped before they are split: by their normalised prompt (system prompt, prior turns and the
prompt, lowercased with whitespace runs collapsed) unless FT_SPLIT_GROUP_BY names another contract field. A
group's split is a pure function of its key, so no prompt is in two splits and a group never changes split as
data grows. `dev` chooses (early stopping, checkpoints); `test` only decides the promotion.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ft_pipeline.core.io import partition_dates, read_jsonl, table_glob, write_json_atomic, write_jsonl_atomic
from ft_pipeline.core.lineage import DATASET_MANIFEST, adapter_watermark, dataset_dir, parse_time
from ft_pipeline.core.schema import RAW_LOG_SCHEMA
from ft_pipeline.core.segments import checked_model_key, checked_segment_field, segment_keys, split_model_key

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

SPLITS = ("train", "dev", "test")
PROMPT_GROUP = "prompt"
# The column a non-prompt group field is read into (any contract field; its values are only hashed).
GROUP_COLUMN = "_split_group"
# Contract fields a split can group by besides the prompt; only these names ever reach the query.
GROUPABLE_FIELDS = frozenset(RAW_LOG_SCHEMA.names) - {PROMPT_GROUP}

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


def normalised(text: str) -> str:
    """Text as groups and near-duplicates compare it: lowercased, whitespace runs collapsed, ends trimmed."""
    return " ".join(str(text).split()).lower()


def prompt_key(messages: Iterable[dict[str, Any]]) -> str:
    """The group key of a chat's prompt: every message before the final answer, normalised, role by role."""
    return "\x1e".join(f"{m.get('role')}\x1f{normalised(m.get('content') or '')}" for m in messages)


def group_key(record: dict[str, Any], group_by: str, defaults: dict[str, str]) -> str:
    """What a record is split by: its normalised prompt, or the value of the `group_by` field (the prompt when it has none)."""
    if group_by != PROMPT_GROUP:
        value = record.get(GROUP_COLUMN)
        if value is not None and str(value) != "":
            return f"{group_by}\x1d{value}"
    return f"{PROMPT_GROUP}\x1d{prompt_key(prompt_messages(record, defaults))}"


def split_of(key: str, dev_share: float, test_share: float) -> str:
    """`train`, `dev` or `test` for a group key: a pure function of the key, so a group never changes split as data grows."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_share:
        return "test"
    return "dev" if u < test_share + dev_share else "train"


def check_split_settings(settings: Any) -> None:
    """ValueError when the shares or the group field cannot give a split."""
    for name in ("dev_share", "test_share"):
        share = getattr(settings, name)
        if not 0.0 <= share < 1.0:
            raise ValueError(f"FT_{name.upper()}={share}: a share must be at least 0 and below 1")
    if settings.dev_share + settings.test_share >= 1.0:
        raise ValueError(f"FT_DEV_SHARE + FT_TEST_SHARE = {settings.dev_share + settings.test_share}: nothing left to train on")
    if settings.split_group_by != PROMPT_GROUP and settings.split_group_by not in GROUPABLE_FIELDS:
        raise ValueError(
            f"FT_SPLIT_GROUP_BY={settings.split_group_by!r}: use 'prompt' or one of the contract fields {sorted(GROUPABLE_FIELDS)}"
        )


def split_records(records: list[dict[str, Any]], settings: Any) -> dict[str, list[dict[str, Any]]]:
    """Records by split (train, dev, test), each record in the split of its group."""
    check_split_settings(settings)
    defaults = dict(settings.default_system_prompts)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for record in records:
        key = group_key(record, settings.split_group_by, defaults)
        splits[split_of(key, settings.dev_share, settings.test_share)].append(record)
    return splits


def read_settlements(
    lake_dir: Path, task: str | None = None, group_by: str = PROMPT_GROUP, segment: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """Settled records (of one task, or all; of one `segment` (field, key) of it, or all), one per log_id (latest ingest
    wins), ordered by timestamp then id; a `group_by` field other than the prompt comes as the `_split_group` column
    (null where the lake lacks it)."""
    import duckdb

    if not partition_dates(lake_dir, "settlements"):
        return []
    columns = ", ".join(SETTLEMENT_COLUMNS)
    if group_by != PROMPT_GROUP:
        if group_by not in GROUPABLE_FIELDS:
            raise ValueError(f"cannot group by {group_by!r}: use 'prompt' or one of {sorted(GROUPABLE_FIELDS)}")
        with duckdb.connect() as con:
            present = {
                row[0]
                for row in con.execute(
                    "DESCRIBE SELECT * FROM read_parquet($glob, union_by_name = true, hive_partitioning = false)",
                    {"glob": table_glob(lake_dir, "settlements")},
                ).fetchall()
            }
        # group_by is a contract field name (checked above), so it is safe to name in the query
        columns += f", CAST({group_by} AS VARCHAR) AS {GROUP_COLUMN}" if group_by in present else f", NULL AS {GROUP_COLUMN}"
    where = "WHERE task = $task" if task is not None else ""
    params: dict[str, Any] = {"glob": table_glob(lake_dir, "settlements")}
    if task is not None:
        params["task"] = task
    if segment is not None:
        field, key = segment
        params["values"] = segment_values(lake_dir, checked_segment_field(field), key, task)
        # the field is a checked contract field name, so it is safe to name in the query
        where += (" AND " if where else "WHERE ") + f"CAST({field} AS VARCHAR) IN (SELECT unnest($values::VARCHAR[]))"
    query = f"""
        SELECT {columns} FROM read_parquet($glob, union_by_name = true, hive_partitioning = false)
        {where}
        QUALIFY row_number() OVER (PARTITION BY log_id ORDER BY ingested_at DESC) = 1
        ORDER BY timestamp, log_id
    """
    with duckdb.connect() as con:
        return con.sql(query, params=params).to_arrow_table().to_pylist()


def segment_counts(lake_dir: Path, field: str, task: str | None = None) -> dict[tuple[str, str], int]:
    """Settled examples (records with an approved text, one per log_id) per (task, segment key) of `field`."""
    import duckdb

    field = checked_segment_field(field)
    if not partition_dates(lake_dir, "settlements"):
        return {}
    query = f"""
        SELECT task, value, count(*) FROM (
            SELECT task, CAST({field} AS VARCHAR) AS value, final_text
            FROM read_parquet($glob, union_by_name = true, hive_partitioning = false)
            {"WHERE task = $task" if task is not None else ""}
            QUALIFY row_number() OVER (PARTITION BY log_id ORDER BY ingested_at DESC) = 1
        ) WHERE value IS NOT NULL AND final_text IS NOT NULL GROUP BY task, value
    """
    params: dict[str, Any] = {"glob": table_glob(lake_dir, "settlements"), **({"task": task} if task is not None else {})}
    with duckdb.connect() as con:
        rows = con.execute(query, params).fetchall()
    keys = segment_keys(value for _, value, _ in rows)
    counts: dict[tuple[str, str], int] = {}
    for row_task, value, n in rows:
        if (found := keys[value]) is not None:
            counts[(row_task, found)] = counts.get((row_task, found), 0) + int(n)
    return counts


def segment_values(lake_dir: Path, field: str, key: str, task: str | None = None) -> list[str]:
    """The distinct values of `field` (in the task's settlements) whose segment key is `key`."""
    import duckdb

    query = f"SELECT DISTINCT CAST({checked_segment_field(field)} AS VARCHAR) FROM read_parquet($glob, union_by_name = true)"
    params: dict[str, Any] = {"glob": table_glob(lake_dir, "settlements")}
    if task is not None:
        query, params["task"] = query + " WHERE task = $task", task
    with duckdb.connect() as con:
        values = [value for (value,) in con.execute(query, params).fetchall() if value is not None]
    return [value for value, found in segment_keys(values).items() if found == key]


def drop_near_duplicates(records: Iterable[dict[str, Any]], defaults: dict[str, str]) -> list[dict[str, Any]]:
    """Records without near-repeats across the whole task: the same normalised prompt (with its system prompt and
    prior turns) and normalised approved text; the first (oldest) copy is kept."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for record in records:
        key = (prompt_key(prompt_messages(record, defaults)), normalised(record.get("final_text") or ""))
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
    """A line of TRL's conversational preference format from an edited record (the edit chosen over the model's output), else None."""
    final, output = record.get("final_text"), record.get("output")
    if record.get("decision") != "edited" or not final or not output or final == output:
        return None
    return {
        "prompt": prompt_messages(record, defaults),
        "chosen": [{"role": "assistant", "content": final}],
        "rejected": [{"role": "assistant", "content": output}],
        "id": str(record["log_id"]),
    }


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


def split_overlap(files: dict[str, Path], groups: dict[str, str] | None = None) -> dict[str, Any]:
    """What the written split files share: ids, normalised prompts, and (given id -> group key) groups in two splits."""
    ids: dict[str, set[str]] = {}
    prompts: dict[str, set[str]] = {}
    for name in SPLITS:
        rows = [row for row in read_jsonl(files[name]) if isinstance(row, dict)]
        ids[name] = {str(row.get("id")) for row in rows}
        prompts[name] = {prompt_key(_prompt_part(row)) for row in rows}

    def shared(sets: dict[str, set[str]]) -> dict[str, int]:
        return {f"{a}/{b}": len(sets[a] & sets[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :]}

    result = {"ids": shared(ids), "prompts": shared(prompts)}
    if groups is not None:
        result["groups"] = shared({name: {groups.get(i, i) for i in ids[name]} for name in SPLITS})
    return result


def validation_report(
    splits: dict[str, list[Any]],
    overlap: dict[str, Any],
    min_train_examples: int,
    stats: dict[str, Any],
    group_by: str,
    min_examples: int = 0,
) -> dict[str, Any]:
    """Whether a dataset may be trained on: format errors, minimum size (of train, and of all splits), a test split, no
    overlap between the written splits; plus prompt diversity and token statistics."""
    train, dev, test = (splits[name] for name in SPLITS)
    everything = [*train, *dev, *test]
    errors = format_errors(everything)
    prompts = [_user_prompt(ex) for ex in everything]
    problems = [f"format error {kind}: {n} example(s)" for kind, n in errors.items()]
    if len(train) < min_train_examples:
        problems.append(f"{len(train)} training examples, fewer than the {min_train_examples} required")
    if len(everything) < min_examples:
        problems.append(f"{len(everything)} examples, fewer than the {min_examples} required")
    if not test:
        problems.append("no test example: the promotion gate would have nothing to decide on (raise FT_TEST_SHARE)")
    # The prompt overlap blocks when records are grouped by prompt; grouped by another field, a prompt may recur across groups.
    blocking = ["ids", "groups"] + (["prompts"] if group_by == PROMPT_GROUP else [])
    for kind in blocking:
        for pair, n in overlap.get(kind, {}).items():
            if n:
                problems.append(f"{n} {kind[:-1]}(s) in both {pair.replace('/', ' and ')}")
    measured = {kind: sum(overlap.get(kind, {}).values()) for kind in blocking}
    return {
        "valid": not problems,
        "problems": problems,
        "format_errors": errors,
        "n_train": len(train),
        "n_dev": len(dev),
        "n_test": len(test),
        "min_train_examples": min_train_examples,
        "min_examples": min_examples,
        "split_group_by": group_by,
        "split_overlap": sum(measured.values()),
        "overlap": overlap,
        "distinct_prompt_ratio": round(len(set(prompts)) / len(prompts), 4) if prompts else 0.0,
        "token_stats": stats,
    }


def _user_prompt(example: Any) -> str:
    messages = example.get("messages") if isinstance(example, dict) else None
    users = [m.get("content") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _prompt_part(example: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of an example before its final answer."""
    messages = [m for m in example.get("messages") or [] if isinstance(m, dict)]
    return messages[:-1] if messages and messages[-1].get("role") == "assistant" else messages


def content_version(paths: Iterable[Path]) -> str:
    """A short content hash of the dataset files: equal data, equal version."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode("utf-8") + b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def build_task_dataset(settings: Any, task: str, tokenizer: Any) -> dict[str, Any]:
    """Write datasets/<task>/{train,dev,test,preferences}.jsonl, validation.json and manifest.json; returns a summary."""
    key = checked_model_key(task)
    task, segment = split_model_key(key)
    check_split_settings(settings)
    defaults = dict(settings.default_system_prompts)
    # a segment's records keep the split their group has in the task's dataset: the task's champion never trained on
    # a segment's test examples, so it can be judged on them
    of_segment = (settings.segment_by, segment) if segment is not None else None
    records = [r for r in read_settlements(settings.lake_dir, task, settings.split_group_by, of_segment) if r.get("final_text")]
    n_settled = len(records)
    records = drop_near_duplicates(records, defaults)
    by_split = split_records(records, settings)
    splits = {name: [chat_example(r, defaults) for r in rows] for name, rows in by_split.items()}
    # Preference pairs only from the train split, so that preference training never sees a dev or test prompt.
    pairs = [p for r in by_split["train"] if (p := preference_pair(r, defaults))]

    folder = dataset_dir(settings.datasets_dir, key)
    files = {name: folder / f"{name}.jsonl" for name in (*SPLITS, "preferences")}
    for name in SPLITS:
        write_jsonl_atomic(splits[name], files[name])
    write_jsonl_atomic(pairs, files["preferences"])
    # A file of the former two-way split would otherwise sit beside the new ones and mislead a reader.
    (folder / "val.jsonl").unlink(missing_ok=True)
    version = content_version(files.values())

    groups = {str(r["log_id"]): group_key(r, settings.split_group_by, defaults) for r in records}
    overlap = split_overlap(files, groups)
    examples = [ex for name in SPLITS for ex in splits[name]]
    stats = token_stats(token_lengths(tokenizer, examples), settings.max_seq_len)
    # a segment qualifies by its examples in all splits (FT_SEGMENT_MIN_EXAMPLES); a task by its training examples
    minimum = (1, settings.segment_min_examples) if segment is not None else (settings.min_train_examples, 0)
    report = validation_report(splits, overlap, minimum[0], stats, settings.split_group_by, min_examples=minimum[1])
    report["near_duplicates_removed"] = n_settled - len(records)
    write_json_atomic({"task": key, "version": version, **report}, folder / "validation.json")

    ingested = [parse_time(r.get("ingested_at")) for r in records]
    watermark = max((t for t in ingested if t is not None), default=None)
    trained_until = parse_time(adapter_watermark(settings.adapters_dir, key))
    new_examples = sum(1 for t in ingested if trained_until is None or (t is not None and t > trained_until))
    manifest = {
        "task": key,
        "version": version,
        "n_train": len(splits["train"]),
        "n_dev": len(splits["dev"]),
        "n_test": len(splits["test"]),
        "n_preferences": len(pairs),
        "split": {"group_by": settings.split_group_by, "dev_share": settings.dev_share, "test_share": settings.test_share},
        "data_watermark": watermark.isoformat() if watermark else None,
        "built_at": datetime.now(UTC).isoformat(),
        **({"segment": {"task": task, "by": settings.segment_by, "key": segment}} if segment is not None else {}),
    }
    write_json_atomic(manifest, folder / DATASET_MANIFEST)
    return {
        **manifest,
        "new_examples": new_examples,
        "path": str(folder),
        "validation": report,
        "preview": splits["train"][:3] or splits["dev"][:3],
    }

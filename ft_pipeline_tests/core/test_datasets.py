"""Per-task datasets: stable hash split, system-prompt fallback, preference pairs, format checks, manifest."""

import json
from datetime import UTC, datetime

import pytest

from ft_pipeline.core.datasets import (
    REASONING_MODE_PROMPTS,
    build_task_dataset,
    format_errors,
    is_validation,
    preference_pair,
    prompt_messages,
    system_prompt,
    token_stats,
    validation_report,
)
from ft_pipeline.core.io import write_json_atomic


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_split_is_a_pure_function_of_the_id_near_the_requested_share():
    ids = [f"log-{i}" for i in range(4000)]
    held_out = [i for i in ids if is_validation(i, 0.1)]
    assert held_out == [i for i in ids if is_validation(i, 0.1)]
    assert 0.08 < len(held_out) / len(ids) < 0.12
    assert not any(is_validation(i, 0.0) for i in ids)


def test_ids_never_move_between_splits_as_data_grows(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    settings = tiny_base_settings.replace(min_train_examples=1)
    write_settlement_rows(settings.lake_dir, [make_settlement(f"a{i}", day=0) for i in range(60)])
    build_task_dataset(settings, "support", tokenizer)
    folder = settings.datasets_dir / "support"
    train1 = {r["id"] for r in _lines(folder / "train.jsonl")}
    val1 = {r["id"] for r in _lines(folder / "val.jsonl")}
    assert val1 and train1 and not train1 & val1

    write_settlement_rows(settings.lake_dir, [make_settlement(f"b{i}", day=1) for i in range(60)])
    summary = build_task_dataset(settings, "support", tokenizer)
    train2 = {r["id"] for r in _lines(folder / "train.jsonl")}
    val2 = {r["id"] for r in _lines(folder / "val.jsonl")}
    assert train1 <= train2 and val1 <= val2 and not train2 & val2
    assert len(train2) + len(val2) == 120
    assert summary["validation"]["split_overlap"] == 0


def test_dataset_files_manifest_and_dedupe(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    settings = tiny_base_settings.replace(min_train_examples=1, val_share=0.0)
    rows = [
        make_settlement("x1", prompt="Hi?", final_text="Hello.", weight=2.0),
        # Same log_id ingested again later: one example, the newer copy.
        make_settlement("x1", prompt="Hi?", final_text="Hello!", ingested_at=datetime(2024, 1, 3, tzinfo=UTC)),
        # Same prompt and approved text under another id: an exact near-duplicate, dropped.
        make_settlement("x2", day=1, prompt="Hi?", final_text="Hello!"),
        make_settlement(
            "x3", day=1, messages=json.dumps([{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Reply"}])
        ),
        make_settlement("other", task="sales"),
    ]
    write_settlement_rows(settings.lake_dir, rows)
    summary = build_task_dataset(settings, "support", tokenizer)
    folder = settings.datasets_dir / "support"
    train = _lines(folder / "train.jsonl")
    assert [r["id"] for r in train] == ["x1", "x3"]
    assert train[0]["messages"][-1] == {"role": "assistant", "content": "Hello!"}
    assert train[0]["weight"] == 1.0
    assert [m["role"] for m in train[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest) == {"task", "version", "n_train", "n_val", "n_preferences", "data_watermark", "built_at"}
    assert manifest["n_train"] == 2 and manifest["n_val"] == 0 and manifest["task"] == "support"
    assert manifest["data_watermark"] == "2024-01-03T00:00:00+00:00"
    assert summary["new_examples"] == 2
    assert json.loads((folder / "validation.json").read_text())["valid"] is True

    # Same data, same version; an adapter trained on data up to the evening of 2 January leaves only x1's re-ingest new.
    assert build_task_dataset(settings, "support", tokenizer)["version"] == manifest["version"]
    write_json_atomic(
        {"data_watermark": "2024-01-02T18:00:00+00:00"}, settings.adapters_dir / "support" / "1" / "training_config.json"
    )
    assert build_task_dataset(settings, "support", tokenizer)["new_examples"] == 1


def test_system_prompt_fallback_order():
    defaults = {"support": "Support default."}
    own = {"task": "support", "system_prompt": "Own.", "reasoning_mode": "agent"}
    in_messages = {"task": "support", "messages": json.dumps([{"role": "system", "content": "From messages."}])}
    assert system_prompt(own, defaults) == "Own."
    assert system_prompt(in_messages, defaults) == "From messages."
    assert system_prompt({"task": "support", "system_prompt": "  ", "reasoning_mode": "agent"}, defaults) == "Support default."
    assert (
        system_prompt({"task": "sales", "reasoning_mode": "chain_of_thought"}, defaults)
        == REASONING_MODE_PROMPTS["chain_of_thought"]
    )
    assert system_prompt({"task": "sales", "reasoning_mode": "unheard_of"}, defaults) == REASONING_MODE_PROMPTS["default"]
    assert system_prompt({"task": "sales"}, {}) == REASONING_MODE_PROMPTS["default"]


def test_prompt_messages_do_not_repeat_the_current_prompt():
    record = {
        "task": "t",
        "prompt": "Now?",
        "messages": json.dumps(
            [{"role": "user", "content": "Before"}, {"role": "assistant", "content": "Ok"}, {"role": "user", "content": "Now?"}]
        ),
    }
    assert [m["content"] for m in prompt_messages(record, {})][1:] == ["Before", "Ok", "Now?"]


def test_preferences_come_from_edits_only():
    edited = {"log_id": "e1", "task": "t", "prompt": "Q", "decision": "edited", "output": "Draft.", "final_text": "Better."}
    pair = preference_pair(edited, {})
    assert pair["chosen"] == "Better." and pair["rejected"] == "Draft." and pair["id"] == "e1"
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert preference_pair({**edited, "decision": "accepted"}, {}) is None
    assert preference_pair({**edited, "final_text": "Draft."}, {}) is None


def test_preferences_file_holds_training_edits(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    settings = tiny_base_settings.replace(min_train_examples=1, val_share=0.0)
    write_settlement_rows(
        settings.lake_dir,
        [
            make_settlement("e1", decision="edited", output="Bad draft.", final_text="Good answer."),
            make_settlement("a1"),
        ],
    )
    build_task_dataset(settings, "support", tokenizer)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in _lines(settings.datasets_dir / "support" / "preferences.jsonl")] == [
        ("e1", "Good answer.", "Bad draft.")
    ]


def test_format_errors_by_type():
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "weight": 1.0}
    bad = [
        "not a dict",
        {"messages": []},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q", "colour": "red"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}]},
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
        {**good, "weight": -1},
    ]
    assert format_errors([good]) == {}
    assert format_errors(bad) == {
        "data_type": 1,
        "missing_messages_list": 1,
        "message_missing_key": 1,
        "missing_content": 2,
        "message_unrecognized_key": 1,
        "unrecognized_role": 1,
        "example_missing_assistant_message": 1,
        "last_message_not_assistant": 1,
        "invalid_weight": 1,
    }


def test_validation_report_minimum_overlap_and_diversity():
    def ex(i, prompt="same"):
        return {
            "id": str(i),
            "weight": 1.0,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "a"}],
        }

    stats = token_stats([3, 5, 10], 4)
    assert stats == {"count": 3, "min": 3, "mean": 6.0, "p95": 10, "max": 10, "over_max_seq_len": 2, "max_seq_len": 4}
    ok = validation_report([ex(i, f"p{i}") for i in range(5)], [ex(9)], 5, stats)
    assert ok["valid"] and ok["problems"] == [] and ok["distinct_prompt_ratio"] == 1.0
    small = validation_report([ex(i) for i in range(4)], [], 5, stats)
    assert not small["valid"] and "fewer than the 5 required" in small["problems"][0]
    assert small["distinct_prompt_ratio"] == 0.25
    leaked = validation_report([ex(i) for i in range(5)], [ex(1)], 5, stats)
    assert not leaked["valid"] and leaked["split_overlap"] == 1


def test_files_load_unchanged_with_the_datasets_library(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    from datasets import load_dataset

    settings = tiny_base_settings.replace(min_train_examples=1, val_share=0.0)
    write_settlement_rows(
        settings.lake_dir,
        [
            make_settlement("e1", decision="edited", output="Bad draft.", final_text="Good answer."),
            make_settlement(
                "a1", messages=json.dumps([{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Reply"}])
            ),
        ],
    )
    build_task_dataset(settings, "support", tokenizer)
    folder = settings.datasets_dir / "support"
    cache = str(settings.root / "hf_cache")
    train = load_dataset("json", data_files=str(folder / "train.jsonl"), split="train", cache_dir=cache)
    assert train.column_names == ["messages", "weight", "id"] and len(train) == 2
    assert train[0]["messages"] == _lines(folder / "train.jsonl")[0]["messages"]
    preferences = load_dataset("json", data_files=str(folder / "preferences.jsonl"), split="train", cache_dir=cache)
    assert set(preferences.column_names) == {"prompt", "chosen", "rejected", "id"}
    # TRL's conversational format: the prompt is a list of messages ending with the user turn.
    assert preferences[0]["prompt"][-1]["role"] == "user"

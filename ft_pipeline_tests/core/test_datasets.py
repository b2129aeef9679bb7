"""Per-task datasets: group-aware train/dev/test split, system-prompt fallback, preference pairs, format checks, manifest."""

import json
from datetime import UTC, datetime

import pytest

from ft_pipeline.core.datasets import (
    REASONING_MODE_PROMPTS,
    build_task_dataset,
    format_errors,
    group_key,
    preference_pair,
    prompt_messages,
    split_of,
    split_overlap,
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


def _ids(folder, split):
    return {r["id"] for r in _lines(folder / f"{split}.jsonl")}


def test_split_is_a_pure_function_of_the_group_near_the_requested_shares():
    keys = [f"prompt\x1dquestion {i}" for i in range(6000)]
    splits = [split_of(k, 0.1, 0.2) for k in keys]
    assert splits == [split_of(k, 0.1, 0.2) for k in keys]
    assert 0.08 < splits.count("dev") / len(keys) < 0.12 and 0.18 < splits.count("test") / len(keys) < 0.22
    assert not any(split_of(k, 0.0, 0.0) != "train" for k in keys)
    # a larger test share only takes groups from dev and train, never gives test groups back
    assert all(split_of(k, 0.1, 0.3) == "test" for k, s in zip(keys, splits) if s == "test")


def test_group_key_normalises_case_whitespace_and_keeps_prior_turns():
    base = {"task": "t", "prompt": "Where is  my ORDER?\n"}
    assert group_key(base, "prompt", {}) == group_key({**base, "prompt": "where is my order?"}, "prompt", {})
    earlier = json.dumps([{"role": "user", "content": "I ordered shoes."}, {"role": "assistant", "content": "Noted."}])
    assert group_key({**base, "messages": earlier}, "prompt", {}) != group_key(base, "prompt", {})
    assert group_key({**base, "system_prompt": "Be terse."}, "prompt", {}) != group_key(base, "prompt", {})
    # grouped by a field: the field decides; a record without it falls back to its prompt
    assert group_key({**base, GROUP: "u1"}, "user_id", {}) == group_key({"task": "t", "prompt": "x", GROUP: "u1"}, "user_id", {})
    assert group_key(base, "user_id", {}) == group_key(base, "prompt", {})


GROUP = "_split_group"


def test_records_sharing_a_prompt_land_in_one_split_as_data_grows(
    tiny_base_settings, tokenizer, write_settlement_rows, make_settlement
):
    settings = tiny_base_settings.replace(min_train_examples=1, dev_share=0.2, test_share=0.2)
    # 40 questions answered four times each (models, retries), with case and spacing that differ
    rows = [
        make_settlement(f"a{q}-{k}", day=k, prompt=(f"Question  {q}?" if k % 2 else f"question {q}?"), final_text=f"Answer {k}.")
        for q in range(40)
        for k in range(4)
    ]
    write_settlement_rows(settings.lake_dir, rows)
    summary = build_task_dataset(settings, "support", tokenizer)
    folder = settings.datasets_dir / "support"
    first = {split: _ids(folder, split) for split in ("train", "dev", "test")}
    assert all(first.values()) and sum(map(len, first.values())) == 160
    for split, ids in first.items():
        questions = {i.split("-")[0] for i in ids}
        assert all(not questions & {i.split("-")[0] for i in other} for s, other in first.items() if s != split)
    validation = summary["validation"]
    assert validation["split_overlap"] == 0 and validation["valid"]
    assert set(validation["overlap"]["prompts"].values()) == {0}
    assert summary["n_dev"] == len(first["dev"]) and summary["n_test"] == len(first["test"])

    write_settlement_rows(settings.lake_dir, [make_settlement(f"b{q}", day=9, prompt=f"QUESTION {q}?") for q in range(40)])
    build_task_dataset(settings, "support", tokenizer)
    second = {split: _ids(folder, split) for split in ("train", "dev", "test")}
    assert all(first[s] <= second[s] for s in first)
    for q in range(40):
        [home] = [s for s in first if any(i.startswith(f"a{q}-") for i in first[s])]
        assert f"b{q}" in second[home]


def test_split_by_user_keeps_each_user_in_one_split(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ft_pipeline.core.io import partition_file

    settings = tiny_base_settings.replace(min_train_examples=1, split_group_by="user_id", dev_share=0.3, test_share=0.3)
    rows = [make_settlement(f"u{u}-{k}", prompt=f"Different question {u} {k}?") for u in range(12) for k in range(5)]
    write_settlement_rows(settings.lake_dir, rows)
    path = partition_file(settings.lake_dir, "settlements", "2024-01-01")
    table = pq.read_table(path)
    pq.write_table(table.append_column("user_id", pa.array([r["log_id"].split("-")[0] for r in table.to_pylist()])), path)
    summary = build_task_dataset(settings, "support", tokenizer)
    folder = settings.datasets_dir / "support"
    users = {split: {i.split("-")[0] for i in _ids(folder, split)} for split in ("train", "dev", "test")}
    assert not users["train"] & users["dev"] and not users["train"] & users["test"] and not users["dev"] & users["test"]
    assert summary["validation"]["split_group_by"] == "user_id" and summary["validation"]["split_overlap"] == 0
    with pytest.raises(ValueError, match="FT_SPLIT_GROUP_BY"):
        build_task_dataset(settings.replace(split_group_by="prompt; DROP TABLE"), "support", tokenizer)


def test_near_duplicates_are_removed_across_days(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    settings = tiny_base_settings.replace(min_train_examples=1, dev_share=0.0, test_share=0.0)
    rows = [
        make_settlement("d1", day=0, prompt="Reset my password", final_text="Use the reset link."),
        make_settlement("d2", day=5, prompt="reset  my PASSWORD", final_text="use the reset link. "),
        make_settlement("d3", day=6, prompt="Reset my password", final_text="Call support."),
    ]
    write_settlement_rows(settings.lake_dir, rows)
    summary = build_task_dataset(settings, "support", tokenizer)
    assert _ids(settings.datasets_dir / "support", "train") == {"d1", "d3"}
    assert summary["validation"]["near_duplicates_removed"] == 1


def test_overlap_is_measured_on_the_written_files(tmp_path):
    def line(i, prompt):
        return json.dumps(
            {"id": i, "weight": 1.0, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "a"}]}
        )

    files = {name: tmp_path / f"{name}.jsonl" for name in ("train", "dev", "test")}
    files["train"].write_text(line("1", "Same prompt") + "\n" + line("2", "Other") + "\n")
    files["dev"].write_text(line("3", "x") + "\n")
    files["test"].write_text(line("4", "same   PROMPT") + "\n" + line("2", "y") + "\n")
    overlap = split_overlap(files)
    assert overlap["prompts"] == {"train/dev": 0, "train/test": 1, "dev/test": 0}
    assert overlap["ids"] == {"train/dev": 0, "train/test": 1, "dev/test": 0}
    splits = {name: _lines(path) for name, path in files.items()}
    report = validation_report(splits, overlap, 1, token_stats([], 8), "prompt")
    assert not report["valid"] and report["split_overlap"] == 2
    assert any("prompt(s) in both train and test" in p for p in report["problems"])


def test_dataset_files_manifest_and_dedupe(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    settings = tiny_base_settings.replace(min_train_examples=1, dev_share=0.0, test_share=0.0)
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
    assert set(manifest) == {
        "task",
        "version",
        "n_train",
        "n_dev",
        "n_test",
        "n_preferences",
        "split",
        "data_watermark",
        "built_at",
    }
    assert manifest["n_train"] == 2 and manifest["n_dev"] == manifest["n_test"] == 0 and manifest["task"] == "support"
    assert manifest["split"] == {"group_by": "prompt", "dev_share": 0.0, "test_share": 0.0}
    assert manifest["data_watermark"] == "2024-01-03T00:00:00+00:00"
    assert summary["new_examples"] == 2
    # without a test split the gate has nothing to decide on: the dataset must not be trained on
    assert json.loads((folder / "validation.json").read_text())["problems"] == [
        "no test example: the promotion gate would have nothing to decide on (raise FT_TEST_SHARE)"
    ]

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
    assert pair["chosen"] == [{"role": "assistant", "content": "Better."}] and pair["id"] == "e1"
    assert pair["rejected"] == [{"role": "assistant", "content": "Draft."}]
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert preference_pair({**edited, "decision": "accepted"}, {}) is None
    assert preference_pair({**edited, "final_text": "Draft."}, {}) is None


def test_preferences_file_holds_training_edits(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    settings = tiny_base_settings.replace(min_train_examples=1, dev_share=0.0, test_share=0.0)
    write_settlement_rows(
        settings.lake_dir,
        [
            make_settlement("e1", decision="edited", output="Bad draft.", final_text="Good answer."),
            make_settlement("a1"),
        ],
    )
    build_task_dataset(settings, "support", tokenizer)
    assert [
        (p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"])
        for p in _lines(settings.datasets_dir / "support" / "preferences.jsonl")
    ] == [("e1", "Good answer.", "Bad draft.")]


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


def test_validation_report_minimum_test_split_and_diversity():
    def ex(i, prompt="same"):
        return {
            "id": str(i),
            "weight": 1.0,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "a"}],
        }

    def report(train, test):
        return validation_report({"train": train, "dev": [], "test": test}, {}, 5, stats, "prompt")

    stats = token_stats([3, 5, 10], 4)
    assert stats == {"count": 3, "min": 3, "mean": 6.0, "p95": 10, "max": 10, "over_max_seq_len": 2, "max_seq_len": 4}
    ok = report([ex(i, f"p{i}") for i in range(5)], [ex(9, "q")])
    assert ok["valid"] and ok["problems"] == [] and ok["distinct_prompt_ratio"] == 1.0
    small = report([ex(i) for i in range(4)], [ex(9)])
    assert not small["valid"] and "fewer than the 5 required" in small["problems"][0]
    assert small["distinct_prompt_ratio"] == 0.2
    untested = report([ex(i, f"p{i}") for i in range(5)], [])
    assert not untested["valid"] and "no test example" in untested["problems"][0]


def test_files_load_unchanged_with_the_datasets_library(tiny_base_settings, tokenizer, write_settlement_rows, make_settlement):
    from datasets import load_dataset

    settings = tiny_base_settings.replace(min_train_examples=1, dev_share=0.0, test_share=0.0)
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
    # TRL's conversational format: the prompt a list of messages ending with the user turn, the answers message lists.
    assert preferences[0]["prompt"][-1]["role"] == "user"
    assert preferences[0]["chosen"] == [{"role": "assistant", "content": "Good answer."}]

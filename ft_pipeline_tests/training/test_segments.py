"""Segment adapters end to end on a tiny model: users whose edits differ systematically (one always shortens, one
always adds a sign-off) get adapters of their own that beat the task's champion on their own test split and not on
another user's; a segment below the minimum is not trained; serving falls back segment, task, base."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from dagster import DagsterInstance, materialize

from ft_pipeline.core.io import partition_file, read_jsonl, write_parquet_atomic
from ft_pipeline.core.settlements import SCHEMA
from ft_pipeline_tests.conftest import TINY_ARCHITECTURE
from ft_pipeline_tests.evaluation_fixtures import NAMES, tiny_settings

TASK = "greet"
TEMPLATES = ("Greet {}.", "Say hello to {}.", "Welcome {}.")
T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)


def answer(name: str) -> str:
    return f"Hello {name}, welcome to the shop!"


# what each user does with the model's answer: the two users the segments are for, a plain one, one with few records
EDITS = {
    "shortener": lambda name: f"Hi {name}.",
    "signer": lambda name: f"{answer(name)} Best, Ana.",
    "plain": answer,
}


def records() -> list[dict]:
    """Every user's settled greetings: each of the three asks every prompt; `tiny` asks ten."""
    prompts = [(template.format(name), name) for template in TEMPLATES for name in NAMES]
    rows = []
    users = [(user, prompts) for user in EDITS] + [("tiny", prompts[:10])]
    for user, asked in users:
        edit = EDITS.get(user, answer)
        for i, (prompt, name) in enumerate(asked):
            final = edit(name)
            at = T0 + timedelta(minutes=len(rows))
            rows.append(
                {
                    "log_id": f"{user}-{i}",
                    "timestamp": at,
                    "task": TASK,
                    "prompt": prompt,
                    "output": answer(name),
                    "final_output": final if final != answer(name) else None,
                    "final_text": final,
                    "decision": "accepted" if final == answer(name) else "edited",
                    "user_id": user,
                    "topic": "welcome" if "Welcome" in prompt else "greeting",
                    "quality_score": 4.0 if user == "signer" else 3.0,
                    "weight": 1.0,
                    "ingested_at": at + timedelta(hours=1),
                }
            )
    return rows


def write_settlements(settings, rows: list[dict]) -> None:
    by_day: dict[str, list[dict]] = {}
    for row in rows:
        by_day.setdefault(row["timestamp"].strftime("%Y-%m-%d"), []).append(row)
    for date, day_rows in by_day.items():
        write_parquet_atomic(
            pa.Table.from_pylist(day_rows, schema=SCHEMA), partition_file(settings.lake_dir, "settlements", date)
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A task champion trained on every user, then the segments trained in one process: (settings, report)."""
    import torch

    from ft_pipeline.core.datasets import build_task_dataset
    from ft_pipeline.serve.rollout import start
    from ft_pipeline.training.base_model import build_builtin, load_tokenizer
    from ft_pipeline.training.champion import promote_evaluated
    from ft_pipeline.training.evaluation import evaluate_candidate
    from ft_pipeline.training.lora import train_task
    from ft_pipeline.training.segments import train_segments

    quiet = lambda _: None  # noqa: E731
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("base")
    # pretrained on every user's style, so that a LoRA adapter only has to choose among them
    chats = [
        [{"role": "user", "content": t.format(n)}, {"role": "assistant", "content": edit(n)}]
        for t in TEMPLATES
        for n in NAMES
        for edit in EDITS.values()
    ]
    build_builtin(
        chats, base, log=quiet, **{**TINY_ARCHITECTURE, "vocab_size": 400, "steps": 150, "seq_len": 48, "batch_size": 16}
    )
    settings = tiny_settings(
        tmp_path_factory.mktemp("data"),
        base,
        segment_by="user_id",
        segment_min_examples=50,
        dev_share=0.15,
        test_share=0.3,
        min_train_examples=20,
        max_steps=60,
        eval_every=20,
    )
    write_settlements(settings, records())
    build_task_dataset(settings, TASK, load_tokenizer(settings))
    train_task(settings, TASK, log=quiet)
    evaluate_candidate(settings, TASK, log=quiet)
    assert promote_evaluated(settings, TASK, log=quiet, move=start)["promoted"]
    return settings, train_segments(settings, TASK, log=quiet)


def test_a_segment_below_the_minimum_is_counted_and_not_trained(trained):
    settings, report = trained
    assert [s["segment"] for s in report["skipped"]] == ["tiny"]
    assert report["skipped"][0]["settled"] == 10 and "fewer than 50" in report["skipped"][0]["reason"]
    assert sorted(s["segment"] for s in report["trained"]) == ["plain", "shortener", "signer"]
    assert not report["failed"] and not (settings.adapters_dir / "greet.tiny").exists()


def test_the_users_who_edit_systematically_beat_the_task_champion_on_their_own_split(trained):
    from ft_pipeline.training.champion import current_champion
    from ft_pipeline.training.evaluation import latest_evaluation

    settings, report = trained
    promoted = {s["segment"] for s in report["promoted"]}
    assert {"shortener", "signer"} <= promoted
    task_champion = current_champion(settings, TASK)
    for user in ("shortener", "signer"):
        evaluation = latest_evaluation(settings, f"{TASK}.{user}")
        assert evaluation["task_champion_compared"] == {"task": TASK, "version": task_champion}
        assert evaluation["gate"]["beats_task_champion"]["passed"] and evaluation["gate"]["beats_base"]["passed"]
        # the paired test over the whole split, not one loss against another: every test example counts
        assert evaluation["tests"]["vs_task_champion"]["p_value"] < 1e-4
        assert evaluation["tests"]["vs_task_champion"]["n_better"] > 0.9 * evaluation["n_examples"]
        assert current_champion(settings, f"{TASK}.{user}") == 1
    history = (settings.evaluations_dir / "greet.signer" / "champion_history.jsonl").read_text(encoding="utf-8")
    assert "promoted at once" in history  # a segment's model moves at once: no staged rollout over one user


def test_a_segment_adapter_does_not_beat_the_task_champion_on_another_users_split(trained):
    from peft import PeftModel

    from ft_pipeline.core.lineage import adapter_dir
    from ft_pipeline.training.base_model import load_base_model
    from ft_pipeline.training.champion import current_champion
    from ft_pipeline.training.data import encode_all
    from ft_pipeline.training.evaluation import paired_test, score_model

    settings, _ = trained
    model, tokenizer = load_base_model(settings)
    rows = read_jsonl(settings.datasets_dir / "greet.shortener" / "test.jsonl")
    examples, _ = encode_all(tokenizer, rows, settings.max_seq_len)
    model = PeftModel.from_pretrained(
        model, str(adapter_dir(settings.adapters_dir, TASK, current_champion(settings, TASK))), "task"
    )
    model.load_adapter(str(adapter_dir(settings.adapters_dir, "greet.signer", 1)), adapter_name="signer")
    scores = {}
    for name in ("task", "signer"):
        model.set_adapter(name)
        scores[name] = score_model(model, tokenizer, examples, [], settings, "cpu")
    # the signer's adapter added sign-offs where the shortener cuts: worse than the task's champion on most examples
    test = paired_test(scores["signer"]["losses"], scores["task"]["losses"])
    assert test["p_value"] > 0.5 and test["n_worse"] > 0.7 * len(examples)
    assert scores["signer"]["loss"] > 1.01 * scores["task"]["loss"]


def test_a_segment_keeps_the_split_its_records_have_in_the_task_dataset(trained):
    settings, _ = trained
    split_of = {}
    for split in ("train", "dev", "test"):
        for row in read_jsonl(settings.datasets_dir / TASK / f"{split}.jsonl"):
            split_of[row["id"]] = split
    for split in ("train", "dev", "test"):
        rows = read_jsonl(settings.datasets_dir / "greet.signer" / f"{split}.jsonl")
        assert rows and all(row["id"].startswith("signer-") and split_of[row["id"]] == split for row in rows)
    manifest = json.loads((settings.datasets_dir / "greet.signer" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["segment"] == {"task": TASK, "by": "user_id", "key": "signer"}


def test_the_segment_adapter_started_from_the_task_champion(trained):
    from ft_pipeline.core.lineage import read_adapter_config
    from ft_pipeline.training.champion import current_champion

    settings, _ = trained
    config = read_adapter_config(settings.adapters_dir, "greet.signer", 1)
    assert config["warm_start"]["task"] == TASK and config["warm_start"]["version"] == current_champion(settings, TASK)


def test_serving_falls_back_from_the_segment_to_the_task_to_the_base(trained):
    from ft_pipeline.training.champion import current_champion
    from ft_pipeline.training.serving import answer, serving_model

    settings, _ = trained
    task_champion = current_champion(settings, TASK)
    assert serving_model(settings, TASK, "signer") == ("greet.signer", 1)
    assert serving_model(settings, TASK, "tiny") == (TASK, task_champion)
    assert serving_model(settings, TASK, "nobody@example.com") == (TASK, task_champion)  # PII is never a segment
    assert serving_model(settings, "other", "signer") == ("other", None)
    reply = answer(settings, TASK, "Greet anna.", max_new_tokens=6, segment="signer")
    assert reply.served_by == "greet.signer v1" and isinstance(reply.text, str)


def test_status_lists_each_segment_with_its_countdown_scores_quality_and_topics(trained):
    from ft_pipeline.training.status import segment_status, task_status

    settings, _ = trained
    (row,) = [r for r in task_status(settings) if r["task"] == TASK]
    segments = {s["segment"]: s for s in row["segments"]}
    assert set(segments) == {"plain", "shortener", "signer", "tiny"}  # segment folders are not listed as tasks
    signer, tiny = segments["signer"], segments["tiny"]
    assert signer["settled"] == 3 * len(NAMES) and signer["new_examples"] == 0 and signer["until_retrain"] == 50
    assert signer["champion_version"] == 1 and signer["champion_scores"]["loss"] > 0
    assert signer["quality"] == {"mean": 4.0, "min": 4.0, "max": 4.0}
    assert [t["topic"] for t in signer["top_topics"]] == ["greeting", "welcome"]
    assert tiny["qualified"] is False and tiny["until_retrain"] == 40 and tiny["champion_version"] is None
    assert segment_status(settings, TASK, "signer") == [signer]


def test_segments_are_partitions_with_their_own_dataset_metadata_and_checks(trained):
    from ft_pipeline.assets.task_dataset import task_dataset
    from ft_pipeline.checks import task_dataset_valid
    from ft_pipeline.resources import PipelineResource

    settings, _ = trained
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tasks", ["greet.shortener", "greet.tiny"])
    resource = PipelineResource(data_dir=settings.data_dir, base_model=settings.base_model)
    env = {"FT_SEGMENT_BY": "user_id", "FT_SEGMENT_MIN_EXAMPLES": "50", "FT_TEST_SHARE": "0.3", "FT_DEV_SHARE": "0.15"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        results = {
            key: materialize(
                [task_dataset, task_dataset_valid],
                resources={"pipeline": resource},
                partition_key=key,
                instance=instance,
                raise_on_error=False,
            )
            for key in ("greet.shortener", "greet.tiny")
        }
    shortener = results["greet.shortener"].asset_materializations_for_node("task_dataset")[0].metadata
    assert shortener["dagster/row_count"].value == 3 * len(NAMES)
    (check,) = results["greet.shortener"].get_asset_check_evaluations()
    assert check.passed
    assert results["greet.shortener"].success and not results["greet.tiny"].success
    (small,) = results["greet.tiny"].get_asset_check_evaluations()
    # below FT_SEGMENT_MIN_EXAMPLES: the blocking check stops its training
    assert not small.passed and "fewer than the 50 required" in small.metadata["problems"].value


def test_trainings_in_one_process_share_one_base_and_get_it_back_as_loaded(trained):
    from ft_pipeline.training.base_model import load_base_model, release_base, shared_base
    from ft_pipeline.training.lora import wrap_lora

    settings, _ = trained
    with shared_base() as cache:
        model, _ = load_base_model(settings)
        assert load_base_model(settings)[0] is model and len(cache) == 1
        release_base(wrap_lora(model, settings))
        assert load_base_model(settings)[0] is model
        wrap_lora(model, settings)  # a user that failed before releasing it
        assert load_base_model(settings)[0] is not model
    assert load_base_model(settings)[0] is not load_base_model(settings)[0]


def test_the_cli_shows_a_tasks_segments_and_answers_as_a_segment(trained, capsys):
    from ft_pipeline.cli import main

    settings, _ = trained
    env = {"FT_SEGMENT_BY": "user_id", "FT_SEGMENT_MIN_EXAMPLES": "50", "FT_BASE_MODEL": settings.base_model}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**env, "FT_DEVICE": "cpu"}.items():
            patch.setenv(key, value)
        assert main(["--data-dir", settings.data_dir, "status", "--task", TASK, "--segment", "signer", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["tasks"]
        assert [s["segment"] for s in row["segments"]] == ["signer"] and row["segments"][0]["champion_version"] == 1
        assert main(["--data-dir", settings.data_dir, "status", "--task", TASK]) == 0
        table = capsys.readouterr().out
        assert "segments by user_id: 4" in table and "tiny" in table and "greeting (" in table
        assert (
            main(["--data-dir", settings.data_dir, "generate", TASK, "Greet anna.", "--segment", "tiny", "--max-new-tokens", "4"])
            == 0
        )
        assert f"answered by {TASK} v1" in capsys.readouterr().err
        assert main(["--data-dir", settings.data_dir, "status", "--segment", "signer"]) == 2

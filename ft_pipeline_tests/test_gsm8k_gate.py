"""Real text end to end: the GSM8K review log through ingest, settlements, the dataset split, training and the gate."""

import gzip
import json

import pytest
from dagster import DagsterInstance, materialize

from ft_pipeline.assets.adapter_evaluation import adapter_evaluation
from ft_pipeline.assets.champion import champion
from ft_pipeline.assets.lora_adapter import lora_adapter
from ft_pipeline.assets.task_dataset import task_dataset
from ft_pipeline.checks import adapter_beats_base, adapter_beats_champion, task_dataset_valid
from ft_pipeline.core.datasets import normalised
from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import partition_dates
from ft_pipeline.core.settlements import build_partition
from ft_pipeline.resources import PipelineResource
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import current_champion
from ft_pipeline_tests.gsm8k import gsm8k_records

TASK = "math_qa"
ENV = {
    "FT_DEVICE": "cpu",
    "FT_TORCH_THREADS": "1",
    "FT_MAX_STEPS": "6",
    "FT_EVAL_EVERY": "3",
    "FT_BATCH_SIZE": "8",
    "FT_LORA_R": "4",
    "FT_MAX_SEQ_LEN": "384",
    "FT_EVAL_GENERATION_SAMPLES": "2",
    "FT_EVAL_MAX_NEW_TOKENS": "4",
}


def _user_prompts(path):
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {normalised([m["content"] for m in row["messages"] if m["role"] == "user"][-1]) for row in rows}, {
        row["id"] for row in rows
    }


@pytest.fixture(scope="module")
def gsm8k_lake(tmp_path_factory):
    """The GSM8K records ingested and settled into a lake of their own."""
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("gsm8k")))
    settings.inbox_dir.mkdir(parents=True)
    with gzip.open(settings.inbox_dir / "gsm8k.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in gsm8k_records())
    ingest(settings, last_day="2024-03-31")
    for day in partition_dates(settings.lake_dir, "raw_logs"):
        build_partition(settings, day)
    return settings


def test_gsm8k_splits_share_no_prompt_and_the_gate_records_its_decision(gsm8k_lake, tiny_model_dir, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    settings = gsm8k_lake
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tasks", [TASK])
    result = materialize(
        [
            task_dataset,
            task_dataset_valid,
            lora_adapter,
            adapter_evaluation,
            adapter_beats_base,
            adapter_beats_champion,
            champion,
        ],
        resources={"pipeline": PipelineResource(data_dir=settings.data_dir, base_model=str(tiny_model_dir))},
        partition_key=TASK,
        instance=instance,
        raise_on_error=False,
    )
    folder = settings.datasets_dir / TASK
    prompts, ids = {}, {}
    for split in ("train", "dev", "test"):
        prompts[split], ids[split] = _user_prompts(folder / f"{split}.jsonl")
    # the four models answered every question: each question's records all sit in one split
    assert all(prompts.values())
    assert (
        not prompts["train"] & prompts["dev"] and not prompts["train"] & prompts["test"] and not prompts["dev"] & prompts["test"]
    )
    report = json.loads((folder / "validation.json").read_text())
    assert report["valid"] and report["split_overlap"] == 0 and report["near_duplicates_removed"] > 0

    evaluation = json.loads((settings.evaluations_dir / TASK / "1.json").read_text())
    assert evaluation["split"] == "test" and set(evaluation["example_ids"]) <= ids["test"]
    assert evaluation["decision"] in {"promote", "keep"}
    assert 0.0 <= evaluation["tests"]["vs_base"]["p_value"] <= 1.0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["task_dataset_valid"].passed
    assert checks["adapter_beats_base"].metadata["p_value"].value == evaluation["tests"]["vs_base"]["p_value"]
    promoted = bool(result.asset_materializations_for_node("champion"))
    # the promotion step ran only when the gate passed, and then moved the alias
    assert promoted == checks["adapter_beats_base"].passed == (evaluation["decision"] == "promote")
    assert current_champion(settings, TASK) == (1 if promoted else None)

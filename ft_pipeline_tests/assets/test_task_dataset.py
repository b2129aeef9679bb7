"""task_dataset materialized in process over a prepared settlements lake, with the tiny base model."""

import json

from dagster import DagsterInstance, materialize

from ft_pipeline.assets.task_dataset import task_dataset
from ft_pipeline.checks import task_dataset_valid
from ft_pipeline.resources import PipelineResource


def test_materialize_writes_the_dataset_and_reports_it(tmp_path, tiny_model_dir, write_settlement_rows, make_settlement):
    data_dir = tmp_path / "data"
    rows = [make_settlement(f"s{i}", day=i % 3) for i in range(70)]
    rows += [make_settlement("e1", decision="edited", output="Rough draft.", final_text="Polished answer.")]
    rows += [make_settlement(f"o{i}", task="other") for i in range(5)]
    write_settlement_rows(data_dir / "lake", rows)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tasks", ["support"])

    result = materialize(
        [task_dataset, task_dataset_valid],
        instance=instance,
        partition_key="support",
        resources={"pipeline": PipelineResource(data_dir=str(data_dir), base_model=str(tiny_model_dir))},
    )

    assert result.success
    metadata = result.asset_materializations_for_node("task_dataset")[0].metadata
    folder = data_dir / "datasets" / "support"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert metadata["n_train"].value + metadata["n_dev"].value + metadata["n_test"].value == 71
    assert metadata["split_overlap"].value == 0 and metadata["split_group_by"].value == "prompt"
    assert metadata["n_train"].value == manifest["n_train"] and metadata["version"].value == manifest["version"]
    assert metadata["new_examples"].value == 71 and metadata["valid"].value is True
    assert metadata["tokens_max"].value >= metadata["tokens_mean"].value >= metadata["tokens_min"].value > 0
    assert "```json" in metadata["preview"].value
    train_ids = {json.loads(line)["id"] for line in (folder / "train.jsonl").read_text().splitlines()}
    held_out = {
        json.loads(line)["id"] for split in ("dev", "test") for line in (folder / f"{split}.jsonl").read_text().splitlines()
    }
    assert held_out and not train_ids & held_out and not any(i.startswith("o") for i in train_ids | held_out)
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["n_train"].value == manifest["n_train"]

"""The blocking dataset check: it fails below the minimum size, which stops training downstream, and passes above."""

from dagster import AssetCheckSeverity, DagsterInstance, asset, materialize

from ft_pipeline.assets.task_dataset import task_dataset
from ft_pipeline.checks import asset_checks, task_dataset_valid
from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource


@asset(partitions_def=task_partitions, deps=[task_dataset])
def trainer() -> None:
    """Stands in for lora_adapter: anything downstream of the dataset."""


def _run(tmp_path, tiny_model_dir, write_settlement_rows, rows):
    data_dir = tmp_path / "data"
    write_settlement_rows(data_dir / "lake", rows)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tasks", ["support"])
    return materialize(
        [task_dataset, task_dataset_valid, trainer],
        instance=instance,
        partition_key="support",
        resources={"pipeline": PipelineResource(data_dir=str(data_dir), base_model=str(tiny_model_dir))},
        raise_on_error=False,
    )


def test_check_is_registered():
    assert task_dataset_valid in asset_checks


def test_too_small_dataset_fails_the_check_and_blocks_downstream(
    tmp_path, tiny_model_dir, write_settlement_rows, make_settlement
):
    result = _run(tmp_path, tiny_model_dir, write_settlement_rows, [make_settlement(f"r{i}") for i in range(20)])
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert "fewer than the 50 required" in check.metadata["problems"].value
    assert result.asset_materializations_for_node("task_dataset")
    assert not result.asset_materializations_for_node("trainer")


def test_large_enough_dataset_passes_and_training_proceeds(tmp_path, tiny_model_dir, write_settlement_rows, make_settlement):
    result = _run(tmp_path, tiny_model_dir, write_settlement_rows, [make_settlement(f"r{i}") for i in range(80)])
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    assert result.asset_materializations_for_node("trainer")


def test_a_split_that_leaks_prompts_fails_the_check_and_blocks_training(
    tmp_path, tiny_model_dir, write_settlement_rows, make_settlement, monkeypatch
):
    from ft_pipeline.core import datasets

    # the former row-level split: each record by its own id, so records that share a prompt land on both sides
    monkeypatch.setattr(datasets, "group_key", lambda record, group_by, defaults: str(record["log_id"]))
    rows = [make_settlement(f"r{i}", prompt=f"Question {i % 10}?", final_text=f"Answer {i}.") for i in range(120)]
    result = _run(tmp_path, tiny_model_dir, write_settlement_rows, rows)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["split_overlap"].value > 0
    assert "prompt(s) in both train and test" in check.metadata["problems"].value
    assert not result.asset_materializations_for_node("trainer")

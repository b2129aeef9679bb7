"""The lora_adapter asset: trains the partition's task, reports metadata, refuses invalid datasets."""

import pytest
import torch
from dagster import DagsterInstance, materialize

from ft_pipeline.assets.lora_adapter import lora_adapter
from ft_pipeline.core.io import write_json_atomic
from ft_pipeline.core.lineage import adapter_versions
from ft_pipeline.resources import PipelineResource
from ft_pipeline_tests.evaluation_fixtures import TASK, tiny_settings, write_dataset

RUN_CONFIG = {"ops": {"lora_adapter": {"config": {"max_steps": 4, "eval_every": 2, "lora_r": 4}}}}


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("tasks", [TASK])
        yield instance


@pytest.fixture
def settings(tmp_path, tiny_model_dir, monkeypatch):
    torch.set_num_threads(1)
    settings = tiny_settings(tmp_path / "data", tiny_model_dir)
    for env, value in {"FT_DEVICE": "cpu", "FT_TORCH_THREADS": "1", "FT_LORA_DROPOUT": "0"}.items():
        monkeypatch.setenv(env, value)
    write_dataset(settings)
    return settings


def _materialize(settings, instance):
    resource = PipelineResource(data_dir=settings.data_dir, base_model=settings.base_model)
    return materialize(
        [lora_adapter],
        instance=instance,
        resources={"pipeline": resource},
        partition_key=TASK,
        run_config=RUN_CONFIG,
        raise_on_error=False,
    )


def test_materializes_a_registered_adapter_with_metadata(settings, instance):
    result = _materialize(settings, instance)
    assert result.success
    metadata = result.asset_materializations_for_node("lora_adapter")[0].metadata
    assert metadata["version"].value == 1 and metadata["steps"].value == 4
    assert metadata["dev_loss"].value < metadata["initial_dev_loss"].value
    assert metadata["tokens_per_s"].value > 0 and metadata["trainable_params"].value > 0
    assert metadata["mlflow_run_id"].value in metadata["mlflow_run"].value
    assert adapter_versions(settings.adapters_dir, TASK) == [1]
    logs = [e.message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any(m.startswith("step 4/4 loss") for m in logs)


def test_refuses_a_dataset_marked_invalid(settings, instance):
    write_json_atomic({"valid": False, "problems": ["too few examples"]}, settings.datasets_dir / TASK / "validation.json")
    result = _materialize(settings, instance)
    assert not result.success
    assert "too few examples" in str(result.failure_data_for_node("lora_adapter").error)
    assert adapter_versions(settings.adapters_dir, TASK) == []

"""base_model materialized in process: a local model folder is resolved and described."""

from dagster import materialize

from ft_pipeline.assets.base_model import base_model
from ft_pipeline.resources import PipelineResource


def test_materialize_reports_the_base_model(tmp_path, tiny_model_dir):
    result = materialize(
        [base_model], resources={"pipeline": PipelineResource(data_dir=str(tmp_path), base_model=str(tiny_model_dir))}
    )
    assert result.success
    metadata = result.asset_materializations_for_node("base_model")[0].metadata
    assert metadata["path"].value == str(tiny_model_dir.resolve())
    assert metadata["parameters"].value > 0 and metadata["vocab_size"].value <= 320

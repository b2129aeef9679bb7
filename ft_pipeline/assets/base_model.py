"""base_model: the causal LM every adapter sits on (a hub id, a local folder, or the builtin small model)."""

from dagster import AllPartitionMapping, AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from ft_pipeline.resources import PipelineResource, stage_config
from ft_pipeline.training.base_model import base_model_info

ModelConfig = stage_config("model", "ModelConfig")


@asset(
    # The builtin model pretrains on the settled text; a hub or local model ignores it.
    deps=[AssetDep("settlements", partition_mapping=AllPartitionMapping())],
    group_name="training",
    kinds={"pytorch"},
    description="Base causal LM: FT_BASE_MODEL (hub id or folder), or 'builtin', a small Llama model built under "
    "models/base/<hash of its knobs>/; its identity is a content hash that every adapter records.",
)
def base_model(context: AssetExecutionContext, config: ModelConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Resolve the base model, building the builtin one when missing or when its parameters changed."""
    info = base_model_info(pipeline.settings(config), log=context.log.info)
    context.log.info(f"base model at {info['path']}")
    metadata = {k: v for k, v in info.items() if v is not None and k != "path"}
    return MaterializeResult(metadata={**metadata, "path": MetadataValue.path(info["path"])})

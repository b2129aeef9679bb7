"""champion: the promotion step of a task, downstream of the blocking checks on its evaluation; moves the MLflow alias."""

from dagster import AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource, stage_config

PromotionConfig = stage_config("promotion", "PromotionConfig")


@asset(
    partitions_def=task_partitions,
    deps=[AssetDep("adapter_evaluation")],
    group_name="training",
    kinds={"mlflow"},
    description="The task's `champion` alias: moved to the newest adapter when its evaluation decided so, at once for "
    "a task's first adapter or a one-stage tier, else through a staged rollout (see the rollout asset). It runs only "
    "after the blocking checks adapter_beats_base and adapter_beats_champion passed; a dry run records without moving.",
)
def champion(context: AssetExecutionContext, config: PromotionConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Promote the partition's newest adapter when its evaluation says so, and record what happened."""
    from ft_pipeline.serve.rollout import start
    from ft_pipeline.training.champion import history_path, promote_evaluated

    settings = pipeline.settings(config)
    outcome = promote_evaluated(settings, context.partition_key, log=context.log.info, move=start)
    after, rollout = outcome["champion_after"], outcome["rollout"]
    return MaterializeResult(
        metadata={
            "promoted": outcome["promoted"],
            "dry_run": outcome["dry_run"],
            "candidate": outcome["version"],
            "decision": outcome["decision"],
            "champion_before": MetadataValue.int(outcome["champion_before"])
            if outcome["champion_before"] is not None
            else MetadataValue.null(),
            "champion": MetadataValue.int(after) if after is not None else MetadataValue.null(),
            "reason": MetadataValue.md(outcome["reason"]),
            "rollout_stage_percent": MetadataValue.float(rollout["percent"]) if rollout else MetadataValue.null(),
            "history": MetadataValue.path(str(history_path(settings, context.partition_key))),
        }
    )

"""rollout: one automatic step of a task's staged rollout from the live evidence per arm, recorded as plottable metadata."""

from dagster import AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from ft_pipeline.assets.champion import PromotionConfig
from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource

# what a step does, as a number that plots over time next to the stage
ACTIONS = {"none": 0, "hold": 1, "advance": 2, "complete": 3, "rollback": -1}


@asset(
    partitions_def=task_partitions,
    deps=[AssetDep("champion")],
    group_name="training",
    kinds={"mlflow"},
    description="The task's staged rollout: the candidate's live acceptance, rejection rate and latency against the "
    "champion's decide whether it advances a stage, holds, completes (the champion alias moves) or is rolled back. "
    "The rollout_sensor requests it while a rollout is active; every step lands in the alias history.",
)
def rollout(context: AssetExecutionContext, config: PromotionConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Evaluate the partition's active rollout and act on it."""
    from ft_pipeline.serve.rollout import CANDIDATE, CHAMPION, evaluate
    from ft_pipeline.training.champion import history_path

    settings = pipeline.settings(config)
    outcome = evaluate(settings, context.partition_key)
    context.log.info(f"{context.partition_key}: {outcome['action']}: {outcome['reason']}")
    state, evidence = outcome["rollout"] or {}, outcome.get("evidence") or {}
    metadata = {
        "action": outcome["action"],
        "action_code": ACTIONS[outcome["action"]],
        "reason": MetadataValue.md(outcome["reason"]),
        "status": state.get("status", "none"),
        "stage_percent": MetadataValue.float(float(state.get("percent", 0.0))),
        "candidate": MetadataValue.int(state["candidate"]) if state else MetadataValue.null(),
        "champion": MetadataValue.int(state["champion"]) if state else MetadataValue.null(),
        "p_value": MetadataValue.float(outcome["p_value"]) if outcome.get("p_value") is not None else MetadataValue.null(),
        "history": MetadataValue.path(str(history_path(settings, context.partition_key))),
    }
    for arm in (CANDIDATE, CHAMPION):
        numbers = evidence.get(arm) or {}
        for key in ("reviewed", "accepted", "rejected", "stage_reviewed", "calls", "errors"):
            metadata[f"{arm}_{key}"] = MetadataValue.int(int(numbers.get(key, 0)))
        for key in ("acceptance_rate", "rejection_rate", "error_rate", "latency_p95_ms"):
            value = numbers.get(key)
            metadata[f"{arm}_{key}"] = MetadataValue.float(float(value)) if value is not None else MetadataValue.null()
    return MaterializeResult(metadata=metadata)

"""adapter_evaluation: the newest adapter of a task against the base model and the champion on the test split; records the decision."""

from dagster import AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource, stage_config

EvaluationConfig = stage_config("evaluation", "EvaluationConfig")


def scores_table(result: dict) -> str:
    """Markdown table of each model's scores on the same test examples."""
    lines = ["| model | loss | perplexity | token accuracy | chrF | exact match |", "|---|---|---|---|---|---|"]
    for who in ("candidate", "base", "champion", "task_champion"):
        score = result["scores"].get(who)
        if score is None:
            continue
        cells = [score["loss"], score["perplexity"], score["token_accuracy"], score["chrf"], score["exact_match"]]
        lines.append(f"| {who} | " + " | ".join("-" if c is None else f"{c:.4g}" for c in cells) + " |")
    return "\n".join(lines)


@asset(
    partitions_def=task_partitions,
    deps=[AssetDep("lora_adapter")],
    group_name="training",
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    description="The task's newest adapter against the base model and the champion on the test split; records scores, "
    "paired tests and the decision. The `champion` step downstream moves the alias once the blocking checks pass.",
)
def adapter_evaluation(context: AssetExecutionContext, config: EvaluationConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Evaluate the partition's task and record the decision."""
    from ft_pipeline.training.evaluation import evaluate_candidate, evaluation_path, summary_metrics

    settings = pipeline.settings(config)
    task = context.partition_key
    result = evaluate_candidate(settings, task, log=context.log.info)
    reasons = "\n".join(f"- {reason}" for reason in result["reasons"])
    return MaterializeResult(
        metadata={
            "version": result["version"],
            "decision": result["decision"],
            "p_value_vs_base": result["tests"]["vs_base"]["p_value"],
            "base_identity": result["base_identity"]["hash"][:12],
            "champion_before": MetadataValue.int(result["champion_before"])
            if result["champion_before"]
            else MetadataValue.null(),
            **{key: MetadataValue.float(value) for key, value in summary_metrics(result).items()},
            "scores": MetadataValue.md(scores_table(result)),
            "reasons": MetadataValue.md(reasons),
            "path": MetadataValue.path(str(evaluation_path(settings, task, result["version"]))),
        }
    )

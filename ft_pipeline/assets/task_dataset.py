"""task_dataset: one chat fine-tuning dataset per task, built from all of that task's settlements."""

import json

from dagster import AllPartitionMapping, AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from ft_pipeline.core.datasets import build_task_dataset
from ft_pipeline.core.segments import checked_model_key
from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource, stage_config
from ft_pipeline.training.base_model import load_tokenizer

DatasetConfig = stage_config("dataset", "DatasetConfig")


@asset(
    partitions_def=task_partitions,
    deps=[AssetDep("settlements", partition_mapping=AllPartitionMapping()), AssetDep("base_model")],
    group_name="training",
    kinds={"jsonl"},
    description="Chat `messages` JSONL of one task: group-aware train/dev/test split (no prompt in two splits), "
    "preference pairs from edits, validation report with the measured cross-split overlap.",
)
def task_dataset(context: AssetExecutionContext, config: DatasetConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Build datasets/<task>/ from every settlement of the partition's task."""
    settings = pipeline.settings(config)
    task = checked_model_key(context.partition_key)
    summary = build_task_dataset(settings, task, load_tokenizer(settings))
    report, stats = summary["validation"], summary["validation"]["token_stats"]
    return MaterializeResult(
        metadata={
            "dagster/row_count": summary["n_train"] + summary["n_dev"] + summary["n_test"],
            "version": summary["version"],
            "n_train": summary["n_train"],
            "n_dev": summary["n_dev"],
            "n_test": summary["n_test"],
            "split_group_by": report["split_group_by"],
            "split_overlap": report["split_overlap"],
            "near_duplicates_removed": report["near_duplicates_removed"],
            "n_preferences": summary["n_preferences"],
            "new_examples": summary["new_examples"],
            "data_watermark": summary["data_watermark"] or "",
            "valid": report["valid"],
            "problems": MetadataValue.md("\n".join(f"- {p}" for p in report["problems"]) or "none"),
            "distinct_prompt_ratio": report["distinct_prompt_ratio"],
            "tokens_min": stats["min"],
            "tokens_mean": stats["mean"],
            "tokens_p95": stats["p95"],
            "tokens_max": stats["max"],
            "tokens_over_max_seq_len": stats["over_max_seq_len"],
            "path": MetadataValue.path(summary["path"]),
            "preview": MetadataValue.md(_preview(summary["preview"])),
        }
    )


def _preview(examples: list[dict]) -> str:
    """Markdown of a few examples, one fenced JSON block each."""
    if not examples:
        return "_no examples_"
    return "\n\n".join(
        f"**{ex['id']}** (weight {ex['weight']})\n```json\n{json.dumps(ex['messages'], indent=1, ensure_ascii=False)}\n```"
        for ex in examples
    )

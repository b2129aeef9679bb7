"""Asset checks: dataset format and minimum size (blocking training), adapter quality."""

import json

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from ft_pipeline.assets.adapter_evaluation import adapter_evaluation
from ft_pipeline.assets.task_dataset import task_dataset
from ft_pipeline.core.lineage import dataset_dir
from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource


@asset_check(
    asset=task_dataset,
    blocking=True,
    partitions_def=task_partitions,
    description="validation.json of the task's dataset: no format errors, enough training examples, no id in both splits.",
)
def task_dataset_valid(context: AssetCheckExecutionContext, pipeline: PipelineResource) -> AssetCheckResult:
    """Fail (ERROR, blocking lora_adapter) when the dataset's validation report says it must not be trained on."""
    path = dataset_dir(pipeline.settings().datasets_dir, context.partition_key) / "validation.json"
    if not path.is_file():
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, metadata={"problems": f"{path} is missing"})
    report = json.loads(path.read_text(encoding="utf-8"))
    return AssetCheckResult(
        passed=bool(report["valid"]),
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "version": report.get("version", ""),
            "n_train": report["n_train"],
            "n_val": report["n_val"],
            "min_train_examples": report["min_train_examples"],
            "split_overlap": report["split_overlap"],
            "distinct_prompt_ratio": report["distinct_prompt_ratio"],
            "format_errors": MetadataValue.json(report["format_errors"]),
            "problems": MetadataValue.md("\n".join(f"- {p}" for p in report["problems"]) or "none"),
        },
    )


@asset_check(
    asset=adapter_evaluation,
    blocking=True,
    partitions_def=task_partitions,
    description="The task's newest adapter has a significantly lower validation loss than the base model (Wilcoxon).",
)
def adapter_beats_base(context: AssetCheckExecutionContext, pipeline: PipelineResource) -> AssetCheckResult:
    """Fail (ERROR) when the evaluation of the newest adapter is missing or does not beat the base model."""
    from ft_pipeline.training.evaluation import latest_evaluation

    result = latest_evaluation(pipeline.settings(), context.partition_key)
    if result is None:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.ERROR, description="the newest adapter has no evaluation"
        )
    test = result["tests"]["vs_base"]
    return AssetCheckResult(
        passed=test["p_value"] < result["p_threshold"],
        severity=AssetCheckSeverity.ERROR,
        description=f"v{result['version']} against the base model: p={test['p_value']:.3g} (threshold {result['p_threshold']})",
        metadata={
            "version": result["version"],
            "p_value": test["p_value"],
            "rank_biserial": test["rank_biserial"],
            "median_loss_difference": test["median_difference"],
            "candidate_loss": result["scores"]["candidate"]["loss"],
            "base_loss": result["scores"]["base"]["loss"],
        },
    )


@asset_check(
    asset="pattern_report",
    description="Each task's champion is accepted live at least as often as the champion before it (two-proportion test).",
)
def champion_live_acceptance(pipeline: PipelineResource) -> AssetCheckResult:
    """Warn when a champion's live acceptance rate is significantly below its predecessor's, with the rollback command."""
    from ft_pipeline.training.champion import live_acceptance

    settings = pipeline.settings()
    path = settings.reports_dir / "pattern_report.json"
    if not path.is_file():
        return AssetCheckResult(passed=True, severity=AssetCheckSeverity.WARN, description=f"no report at {path} yet")
    findings = live_acceptance(settings, json.loads(path.read_text(encoding="utf-8")))
    lines = [
        f"{f['task']}: champion v{f['champion']} accepted {f['acceptance_rate']:.1%} (n={f['n']}) vs "
        f"v{f['predecessor']} {f['predecessor_acceptance_rate']:.1%} (n={f['predecessor_n']}), p={f['p_value']:.3g}"
        + (f"; roll back with `{f['rollback_command']}`" if f["dropped"] else "")
        for f in findings
    ]
    alarms = [line for f, line in zip(findings, lines) if f["dropped"]]
    return AssetCheckResult(
        passed=not alarms,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(alarms) or f"{len(findings)} champions compared with their predecessors, no significant drop",
        metadata={
            "compared": len(findings),
            "dropped": len(alarms),
            "details": MetadataValue.md("\n".join(f"- {line}" for line in lines) or "none"),
        },
    )


asset_checks = [task_dataset_valid, adapter_beats_base, champion_live_acceptance]

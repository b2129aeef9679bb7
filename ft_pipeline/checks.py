"""Asset checks: dataset format, size and split overlap (blocking training), the promotion gate (blocking the champion step)."""

import json
from typing import Any

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
    description="validation.json of the task's dataset: no format errors, enough training examples (a segment: "
    "FT_SEGMENT_MIN_EXAMPLES in all splits), a test split, and "
    "no id, group or prompt in two of the written train, dev and test files.",
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
            "n_dev": report["n_dev"],
            "n_test": report["n_test"],
            "min_train_examples": report["min_train_examples"],
            "min_examples": report.get("min_examples", 0),
            "split_group_by": report["split_group_by"],
            "split_overlap": report["split_overlap"],
            "overlap": MetadataValue.json(report["overlap"]),
            "distinct_prompt_ratio": report["distinct_prompt_ratio"],
            "format_errors": MetadataValue.json(report["format_errors"]),
            "problems": MetadataValue.md("\n".join(f"- {p}" for p in report["problems"]) or "none"),
        },
    )


def _missing(what: str) -> AssetCheckResult:
    return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description=f"the newest adapter has no {what}")


@asset_check(
    asset=adapter_evaluation,
    blocking=True,
    partitions_def=task_partitions,
    description="The task's newest adapter has a significantly lower test loss than the base model (Wilcoxon); "
    "blocks the champion step.",
)
def adapter_beats_base(context: AssetCheckExecutionContext, pipeline: PipelineResource) -> AssetCheckResult:
    """Fail (ERROR) when the evaluation of the newest adapter is missing or does not beat the base model."""
    from ft_pipeline.training.evaluation import latest_evaluation

    result = latest_evaluation(pipeline.settings(), context.partition_key)
    if result is None:
        return _missing("evaluation")
    test, verdict = result["tests"]["vs_base"], result["gate"]["beats_base"]
    return AssetCheckResult(
        passed=bool(verdict["passed"]),
        severity=AssetCheckSeverity.ERROR,
        description=f"v{result['version']}: " + "; ".join(verdict["reasons"]),
        metadata={
            "version": result["version"],
            "p_value": test["p_value"],
            "p_threshold": result["p_threshold"],
            "rank_biserial": test["rank_biserial"],
            "median_loss_difference": test["median_difference"],
            "candidate_loss": result["scores"]["candidate"]["loss"],
            "base_loss": result["scores"]["base"]["loss"],
        },
    )


@asset_check(
    asset=adapter_evaluation,
    blocking=True,
    partitions_def=task_partitions,
    description="The task's newest adapter beats the champion it was compared with, and a segment's also its task's "
    "champion (lower test loss, Wilcoxon, and generations not worse by chrF); passes when there is no champion on the "
    "same base. Blocks the champion step.",
)
def adapter_beats_champion(context: AssetCheckExecutionContext, pipeline: PipelineResource) -> AssetCheckResult:
    """Fail (ERROR) when the evaluation is missing or the candidate does not beat the current champion."""
    from ft_pipeline.training.evaluation import latest_evaluation

    result = latest_evaluation(pipeline.settings(), context.partition_key)
    if result is None:
        return _missing("evaluation")
    # a segment's adapter must beat its own champion and its task's: both verdicts, each where there is that rival
    rivals = [
        (name, who)
        for name, who in (("champion", "champion"), ("task_champion", "task's champion"))
        if result["gate"].get(f"beats_{name}")
    ]
    if not rivals:
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.ERROR,
            description=f"v{result['version']}: no champion to compare with",
            metadata={"version": result["version"], "champion": MetadataValue.null()},
        )
    metadata: dict[str, Any] = {"version": result["version"], "p_threshold": result["p_threshold"]}
    if result["gate"].get("beats_champion"):
        metadata["champion"] = result["champion_compared"]
    if result["gate"].get("beats_task_champion"):
        metadata["task_champion"] = "{task} v{version}".format(**result["task_champion_compared"])
    metadata["candidate_loss"] = result["scores"]["candidate"]["loss"]
    for name, _ in rivals:
        test = result["tests"][f"vs_{name}"]
        metadata[f"{name}_loss"] = result["scores"][name]["loss"]
        metadata[f"p_value_vs_{name}"] = test["p_value"]
        metadata[f"rank_biserial_vs_{name}"] = test["rank_biserial"]
        metadata[f"median_loss_difference_vs_{name}"] = test["median_difference"]
    verdicts = [result["gate"][f"beats_{name}"] for name, _ in rivals]
    return AssetCheckResult(
        passed=all(bool(v["passed"]) for v in verdicts),
        severity=AssetCheckSeverity.ERROR,
        description=f"v{result['version']}: " + "; ".join(reason for v in verdicts for reason in v["reasons"]),
        metadata=metadata,
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


asset_checks = [task_dataset_valid, adapter_beats_base, adapter_beats_champion, champion_live_acceptance]

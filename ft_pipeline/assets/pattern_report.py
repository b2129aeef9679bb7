"""pattern_report: what editors fix, rates by dimension over time, regressions, experiments and recommendations."""

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ft_pipeline.core.patterns import check_findings, publish_report
from ft_pipeline.resources import PipelineResource, stage_config

ReportConfig = stage_config("report", "ReportConfig")

CHECKS = {
    "no_regressions": "No acceptance rate fell by more than the threshold in the last 7 days, significantly.",
    "rejection_rate_alert": "No task or agent is rejected more often than the alert threshold in the last 7 days.",
    "latency_p95_alert": "No task or agent has a latency p95 above the alert threshold in the last 7 days.",
    "confidence_drop_alert": "No task or agent lost more mean confidence than the alert threshold in the last 7 days.",
}


@asset(
    deps=[AssetDep("daily_aggregates", partition_mapping=AllPartitionMapping())],
    check_specs=[AssetCheckSpec(name, asset="pattern_report", description=text) for name, text in CHECKS.items()],
    group_name="curation",
    pool="report",
    kinds={"duckdb", "json"},
    description="Acceptance, edit and rejection rates by task, agent, topic, version and user over 7/30/90 days, "
    "regressions, phrases editors delete and add, tone shifts, retries, failure reasons, A/B tests, recommendations.",
)
def pattern_report(context: AssetExecutionContext, config: ReportConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Combine the daily aggregates of every day into the report, write it, and run its checks."""
    settings = pipeline.settings(config)
    report, markdown, json_path = publish_report(settings)
    context.log.info(
        f"pattern report as of {report['as_of']}: {len(report['regressions'])} regressions, "
        f"{len(report['recommendations'])} recommendations"
    )
    rates = {
        f"acceptance_rate/{task}": g["acceptance_rate"]
        for task, g in report["groups"].get("task", {}).items()
        if g["acceptance_rate"] is not None
    }
    checks = [
        AssetCheckResult(
            check_name=name,
            passed=not findings,
            severity=AssetCheckSeverity.WARN,
            description="; ".join(findings) or CHECKS[name],
            metadata={"findings": len(findings)},
        )
        for name, findings in check_findings(report).items()
    ]
    return MaterializeResult(
        metadata={
            **report["totals"],
            "as_of": report["as_of"] or "",
            "regressions": len(report["regressions"]),
            **rates,
            "path": MetadataValue.path(str(json_path)),
            "report": MetadataValue.md(markdown),
        },
        check_results=checks,
    )

"""settlements: each day's accepted and edited records that pass the quality filters, PII-redacted, with edit metrics."""

from dagster import AssetDep, AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, asset

from ft_pipeline.core.settlements import build_partition, preview_markdown, quarantine_path, settlements_path, summary
from ft_pipeline.partitions import daily_partitions
from ft_pipeline.resources import PipelineResource, stage_config

SettlementsConfig = stage_config("settlements", "SettlementsConfig")


@asset(
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    deps=[AssetDep("raw_logs")],
    group_name="curation",
    pool="settlements",
    kinds={"parquet", "duckdb"},
    description="Settled records (accepted or edited) passing the quality filters, PII-redacted, near-duplicates "
    "removed within the day, with retained similarity, word-level edit spans and a training weight.",
)
def settlements(context: AssetExecutionContext, config: SettlementsConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Settle every day of the run's partition range; metadata totals the range (one day in a normal run)."""
    settings = pipeline.settings(config)
    results = []
    for date in context.partition_keys:
        result = build_partition(settings, date)
        if result.source_missing:
            context.log.warning(
                f"{date}: no raw_logs file (no records that day, or expired by the raw retention); "
                "kept its settlements partition, or wrote an empty one"
            )
        context.log.info(
            f"{date}: {result.settled} of {result.rows_in} records settled; excluded {result.excluded}; PII redacted {result.pii}"
        )
        if result.quarantined:
            context.log.warning(f"{date}: {len(result.quarantined)} records quarantined in {quarantine_path(settings, date)}")
        results.append(result)
    totals = summary(results)
    shown = next((r for r in reversed(results) if r.settled), results[-1])
    return MaterializeResult(
        metadata={
            "dagster/row_count": totals["settled"],
            **{key: MetadataValue.null() if value is None else value for key, value in totals.items()},
            "path": MetadataValue.path(str(settlements_path(settings, context.partition_keys[-1]))),
            "preview": MetadataValue.md(preview_markdown(shown.preview) if shown.settled else "_no settled records_"),
        }
    )

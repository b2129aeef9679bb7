"""daily_aggregates: each day's counts, sums and latency value counts per group, edit n-grams and tone markers."""

from dagster import AssetDep, AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, asset

from ft_pipeline.core.aggregates import write_day
from ft_pipeline.partitions import daily_partitions
from ft_pipeline.resources import PipelineResource, stage_config

AggregatesConfig = stage_config("general", "AggregatesConfig")


@asset(
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    deps=[AssetDep("raw_logs"), AssetDep("settlements")],
    group_name="curation",
    kinds={"parquet", "duckdb"},
    description="One day's pieces of the pattern report (counts, sums and exact latency value counts per group, "
    "edit n-gram counts, tone markers, attempts, failure reasons, experiment arms), which the report adds up.",
)
def daily_aggregates(context: AssetExecutionContext, config: AggregatesConfig, pipeline: PipelineResource) -> MaterializeResult:
    """lake/raw_logs and lake/settlements of each day of the run -> lake/daily_aggregates/date=YYYY-MM-DD/part-0.parquet."""
    settings = pipeline.settings(config)
    written = [write_day(settings.lake_dir, date) for date in context.partition_keys]
    for day in written:
        context.log.info(f"{day.date}: {day.records} records, {day.settled} settled -> {sum(day.rows.values())} aggregate rows")
    rows = {f"rows/{section}": sum(d.rows[section] for d in written) for section in written[-1].rows}
    return MaterializeResult(
        metadata={
            "records": sum(d.records for d in written),
            "settled": sum(d.settled for d in written),
            "dagster/row_count": sum(sum(d.rows.values()) for d in written),
            **rows,
            "path": MetadataValue.path(str(written[-1].path)),
        }
    )

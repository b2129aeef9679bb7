"""raw_logs: every valid inbox record, schema-checked and deduplicated on log_id, one parquet file per UTC day."""

from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, asset

from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.redaction import redact
from ft_pipeline.core.retention import expire
from ft_pipeline.partitions import daily_partitions
from ft_pipeline.resources import PipelineResource, stage_config

RawLogsConfig = stage_config("general", "RawLogsConfig")


@asset(
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    group_name="ingest",
    pool="ingest",
    kinds={"parquet", "duckdb"},
    description="Every valid inbox record, checked against the input contract and deduplicated on log_id, one parquet "
    "file per UTC day; lines that break the contract go to quarantine/ with a reason.",
)
def raw_logs(context: AssetExecutionContext, config: RawLogsConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Inbox JSONL -> lake/raw_logs/date=YYYY-MM-DD/part-0.parquet, feedback lines -> lake/feedback/; contract breakers ->
    quarantine/ with a reason; the days whose calls got new feedback are marked stale for the feedback sensor."""
    settings = pipeline.settings(config)
    days = context.partition_keys
    result = ingest(settings, days=days, last_day=daily_partitions.get_last_partition_key(), run_id=context.run_id)
    expired = expire(settings)
    context.log.info(
        f"{result.files} inbox files, {result.lines} lines: {result.new} new rows, {result.duplicates} duplicates, "
        f"{result.quarantined_total} quarantined, {result.pending} valid rows of other days left for their partitions"
    )
    context.log.info(
        f"{result.files_skipped} inbox files skipped as ingested (the manifest), {result.archived} archived to "
        f"inbox/processed/, {result.files_kept} kept in the inbox for days not stored yet or as unreadable"
    )
    if result.feedback_new or result.feedback_duplicates or result.feedback_quarantined or result.feedback_waiting:
        context.log.info(
            f"feedback: {result.feedback_new} new, {result.feedback_duplicates} duplicates, {result.feedback_quarantined} "
            f"quarantined, {result.feedback_waiting} waiting for their call; calls of {len(result.stale_days)} day(s) got "
            f"new feedback and are settled again: {', '.join(result.stale_days)}"
        )
    if result.debris_removed:
        context.log.info(f"removed {result.debris_removed} staging folder(s) of killed ingests")
    for what, gone in (("raw_logs partitions", expired.raw_logs), ("feedback partitions", expired.feedback)):
        if gone:
            context.log.info(f"retention: expired {len(gone)} {what}, {gone[0]} to {gone[-1]}")
    if expired.quarantine or result.inbox_expired:
        context.log.info(
            f"retention: expired {len(expired.quarantine)} quarantine files, {len(result.inbox_expired)} inbox/processed/ days"
        )
    if result.lines_by_line:
        context.log.info(
            f"{result.lines_by_line} lines were checked one by one: the files or 32 MB pieces that hold a bad line "
            "or a conflicting duplicate, for the line numbers the quarantine names; the rest went through DuckDB's parallel reader"
        )
    # file names and task names come from producers: what the UI and the logs show of them is redacted too
    bad_files = {redact(source)[0]: reason for source, reason in sorted(result.bad_files.items())}
    tasks = {redact(task)[0]: count for task, count in result.tasks.items()}
    for source, reason in bad_files.items():
        context.log.warning(f"quarantined the whole file {source}: {reason}; the rest of the inbox was read")
    for reason, count in sorted(result.quarantined.items()):
        context.log.warning(f"quarantined {count} lines: {reason} (see {settings.quarantine_dir})")
    if result.odd_blank_lines or result.bom_lines:
        context.log.info(
            f"{result.odd_blank_lines} lines of unusual white space skipped as blank, "
            f"{result.bom_lines} byte order marks dropped from the start of a line"
        )
    # raw_logs keeps the original text; what the UI shows of it is redacted like every later stage
    preview = "\n".join(
        f"| {redact(r['log_id'])[0]} | {r['timestamp']:%Y-%m-%d %H:%M:%S} | {redact(r['task'])[0]} | {r['decision']} | {redact(r['prompt'])[0].replace('|', ' ')} |"
        for r in result.preview
    )
    metadata = {
        "rows_stored": result.stored,
        "new_rows": result.new,
        "duplicates": result.duplicates,
        "quarantined": result.quarantined_total,
        "lines_read": result.lines,
        "lines_checked_one_by_one": result.lines_by_line,
        "inbox_files": result.files,
        "inbox_files_skipped": result.files_skipped,
        "inbox_files_kept": result.files_kept,
        "inbox_files_archived": result.archived,
        "debris_removed": result.debris_removed,
        "expired_raw_partitions": len(expired.raw_logs),
        "expired_feedback_partitions": len(expired.feedback),
        "expired_quarantine_files": len(expired.quarantine),
        "expired_inbox_days": len(result.inbox_expired),
        "expired": MetadataValue.json(
            {
                "raw_logs": expired.raw_logs,
                "feedback": expired.feedback,
                "quarantine_files": len(expired.quarantine),
                "inbox_processed_days": result.inbox_expired,
            }
        ),
        "bad_files": len(result.bad_files),
        "bad_file_reasons": MetadataValue.json(bad_files),
        "odd_blank_lines": result.odd_blank_lines,
        "bom_lines": result.bom_lines,
        "partitions": MetadataValue.json(result.partitions),
        "tasks": MetadataValue.json(tasks),
        "feedback_stored": result.feedback_new,
        "feedback_duplicates": result.feedback_duplicates,
        "feedback_quarantined": result.feedback_quarantined,
        "feedback_waiting": result.feedback_waiting,
        "stale_days": MetadataValue.json(result.stale_days),
        "preview": MetadataValue.md("| log_id | timestamp | task | decision | prompt |\n|---|---|---|---|---|\n" + preview),
        **{f"quarantined_{reason}": count for reason, count in sorted(result.quarantined.items())},
        **{f"rows_task_{task}": count for task, count in tasks.items()},
    }
    return MaterializeResult(metadata=metadata)

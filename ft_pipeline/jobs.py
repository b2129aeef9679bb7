"""Asset jobs: the daily ingest of a day's logs with the report refresh, and the retrain of one task from dataset to evaluation."""

from dagster import AssetSelection, define_asset_job

from ft_pipeline.partitions import daily_partitions, task_partitions

# The unpartitioned pattern_report runs once after the day's partitions, with its alert checks: the inbox sensor
# and the daily schedule, which launch this job, refresh the report and its alerts after every ingest.
ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.assets("raw_logs", "settlements", "daily_aggregates", "pattern_report"),
    partitions_def=daily_partitions,
    description="Ingest one day's inbox records into raw_logs, settle them, aggregate the day and refresh the "
    "pattern report with its alert checks.",
)

# selecting the assets by key selects their asset checks too, so a retrain also validates what it built
retrain_job = define_asset_job(
    "retrain_job",
    selection=AssetSelection.assets("task_dataset", "lora_adapter", "adapter_evaluation", "champion"),
    partitions_def=task_partitions,
    description="Rebuild one task's dataset, train its LoRA adapter, evaluate it against base and champion, "
    "and promote it when the blocking checks pass.",
)

rollout_job = define_asset_job(
    "rollout_job",
    selection=AssetSelection.assets("rollout"),
    partitions_def=task_partitions,
    description="One step of a task's staged rollout: advance, hold, complete or roll back on the live evidence.",
)

# feedback on calls of an older day makes that day's settlements stale: the feedback sensor settles it again, with
# everything computed from it
resettle_job = define_asset_job(
    "resettle_job",
    selection=AssetSelection.assets("settlements", "daily_aggregates", "pattern_report"),
    partitions_def=daily_partitions,
    description="Settle one day again after new feedback on its calls, aggregate it and refresh the pattern report.",
)

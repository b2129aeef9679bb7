"""Asset jobs: the daily ingest of a day's logs, and the retrain of one task from dataset to evaluation."""

from dagster import AssetSelection, define_asset_job

from ft_pipeline.partitions import daily_partitions, task_partitions

ingest_job = define_asset_job(
    "ingest_job",
    selection=["raw_logs", "settlements"],
    partitions_def=daily_partitions,
    description="Ingest one day's inbox records into raw_logs and settle them.",
)

# selecting the assets by key selects their asset checks too, so a retrain also validates what it built
retrain_job = define_asset_job(
    "retrain_job",
    selection=AssetSelection.assets("task_dataset", "lora_adapter", "adapter_evaluation", "champion"),
    partitions_def=task_partitions,
    description="Rebuild one task's dataset, train its LoRA adapter, evaluate it against base and champion, "
    "and promote it when the blocking checks pass.",
)

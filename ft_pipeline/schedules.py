"""Schedules: yesterday's ingest every day, and a nightly retrain of every task with new settled examples."""

from datetime import timedelta

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from ft_pipeline.core.freshness import new_examples_count
from ft_pipeline.inflight import tasks_in_progress
from ft_pipeline.jobs import ingest_job, retrain_job
from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource
from ft_pipeline.settings import Settings

_settings = Settings.from_env()


@schedule(
    job=ingest_job,
    cron_schedule=_settings.daily_ingest_cron,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Closes yesterday's raw_logs and settlements partitions once the day is over.",
)
def daily_ingest_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    """Ingest of the day before the tick."""
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return RunRequest(run_key=f"ingest:{day}", partition_key=day)


@schedule(
    job=retrain_job,
    cron_schedule=_settings.nightly_retrain_cron,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Retrains every task that has any settled example newer than its latest adapter's data.",
)
def nightly_retrain_schedule(context: ScheduleEvaluationContext, pipeline: PipelineResource):
    """One retrain run per task partition with new data."""
    settings = pipeline.settings()
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    requests = []
    # tasks become partitions through the retrain sensor; a run for an unknown partition would fail
    tasks = context.instance.get_dynamic_partitions(task_partitions.name)
    busy = tasks_in_progress(context.instance, settings, tasks)
    for task in sorted(set(tasks) - busy):
        count = new_examples_count(settings, task)
        if count > 0:
            tags = {"ft_pipeline/new_examples": str(count)}
            requests.append(RunRequest(run_key=f"nightly:{day}:{task}", partition_key=task, tags=tags))
    return requests or SkipReason("no task has settled examples newer than its latest adapter")

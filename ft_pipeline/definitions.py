"""The Dagster code location: assembles assets, checks, jobs, schedules, sensors and resources."""

from dagster import Definitions

from ft_pipeline.assets.adapter_evaluation import adapter_evaluation
from ft_pipeline.assets.base_model import base_model
from ft_pipeline.assets.champion import champion
from ft_pipeline.assets.daily_aggregates import daily_aggregates
from ft_pipeline.assets.lora_adapter import lora_adapter
from ft_pipeline.assets.pattern_report import pattern_report
from ft_pipeline.assets.raw_logs import raw_logs
from ft_pipeline.assets.rollout import rollout
from ft_pipeline.assets.settlements import settlements
from ft_pipeline.assets.task_dataset import task_dataset
from ft_pipeline.checks import asset_checks
from ft_pipeline.jobs import ingest_job, resettle_job, retrain_job, rollout_job
from ft_pipeline.resources import PipelineResource
from ft_pipeline.schedules import daily_ingest_schedule, nightly_retrain_schedule
from ft_pipeline.sensors import feedback_sensor, inbox_sensor, retrain_sensor, rollout_sensor

defs = Definitions(
    assets=[
        raw_logs,
        settlements,
        daily_aggregates,
        pattern_report,
        base_model,
        task_dataset,
        lora_adapter,
        adapter_evaluation,
        champion,
        rollout,
    ],
    asset_checks=asset_checks,
    jobs=[ingest_job, retrain_job, resettle_job, rollout_job],
    schedules=[daily_ingest_schedule, nightly_retrain_schedule],
    sensors=[inbox_sensor, retrain_sensor, feedback_sensor, rollout_sensor],
    resources={"pipeline": PipelineResource()},
)

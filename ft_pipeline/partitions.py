"""Partitions: one per day of record timestamps, one per task seen in the data."""

from dagster import DailyPartitionsDefinition, DynamicPartitionsDefinition

from ft_pipeline.settings import Settings

# end_offset=1 so that today's records have a partition before the day is over.
daily_partitions = DailyPartitionsDefinition(start_date=Settings.from_env().partitions_start, timezone="UTC", end_offset=1)

task_partitions = DynamicPartitionsDefinition(name="tasks")

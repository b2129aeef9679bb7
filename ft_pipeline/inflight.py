"""Work already in progress: task partitions that a queued or running run, or a training outside Dagster, is doing now."""

from collections.abc import Iterable

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from ft_pipeline.core.locks import is_free, lock_path
from ft_pipeline.settings import Settings

PARTITION_TAG = "dagster/partition"
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def tasks_in_progress(instance: DagsterInstance, settings: Settings, tasks: Iterable[str]) -> set[str]:
    """Those of `tasks` that a run of this instance not yet finished targets, or whose training lock a process holds.

    The lock covers what the instance cannot see: `ft-pipeline run` on another Dagster home, or `python -m
    ft_pipeline.training.lora` by hand.
    """
    tasks = set(tasks)
    runs = instance.get_runs(RunsFilter(statuses=IN_PROGRESS))
    busy = {run.tags[PARTITION_TAG] for run in runs if run.tags.get(PARTITION_TAG) in tasks}
    return busy | {task for task in tasks if not is_free(lock_path(settings.root, f"train-{task}"))}

"""What killed trainings of a task leave behind, found and finished by the task's next training while it holds the task's lock."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from ft_pipeline.core.lineage import adapter_dir
from ft_pipeline.core.scratch import sweep
from ft_pipeline.core.segments import checked_model_key
from ft_pipeline.settings import Settings
from ft_pipeline.training.tracking import client, experiment_name, registered_model_name

ADAPTER_SCRATCH = "adapter"
ORPHAN_TAG = "ft_pipeline.orphaned"


@dataclass
class Leftovers:
    """What one clean-up found: staging folders removed, MLflow runs and their unfinished logged models marked failed,
    registry versions marked orphaned."""

    staging_removed: list[str] = field(default_factory=list)
    runs_failed: list[str] = field(default_factory=list)
    versions_orphaned: list[int] = field(default_factory=list)
    models_failed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.staging_removed or self.runs_failed or self.versions_orphaned or self.models_failed)

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"finished the leftovers of killed trainings: {len(self.staging_removed)} staging folder(s) removed, "
            f"MLflow run(s) marked FAILED: {', '.join(self.runs_failed) or 'none'}, "
            f"their unfinished logged model(s) marked FAILED: {', '.join(self.models_failed) or 'none'}, "
            f"registry version(s) without an adapter marked {ORPHAN_TAG}: {', '.join(map(str, self.versions_orphaned)) or 'none'}"
        )


def finish_dead_trainings(settings: Settings, task: str) -> Leftovers:
    """Remove dead trainings' staging folders, fail their MLflow runs and mark their adapterless registry versions.

    Called with the task's training lock held, so no training of this task is alive: a RUNNING run of its
    experiment, or a version whose adapter folder never arrived, belongs to a process that died.
    """
    task = checked_model_key(task)
    found = Leftovers()
    # staging folders of any task whose owner died: their lock tells, not the task
    found.staging_removed = [str(p) for p in sweep(settings.root, ADAPTER_SCRATCH)]
    for legacy in sorted((settings.adapters_dir / task).glob(".staging-*")):
        shutil.rmtree(legacy, ignore_errors=True)
        found.staging_removed.append(str(legacy))
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(experiment_name(task))
    if experiment is not None:
        for run in mlflow_client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
            mlflow_client.set_tag(run.info.run_id, "ft_pipeline.failed_reason", "its training process died before it finished")
            mlflow_client.set_terminated(run.info.run_id, status="FAILED")
            found.runs_failed.append(run.info.run_id)
            # the pyfunc model whose files it was still writing
            logged = mlflow_client.search_logged_models(
                [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
            )
            for model in logged:
                if str(model.status) == "PENDING":
                    mlflow_client.finalize_logged_model(model.model_id, "FAILED")
                    found.models_failed.append(model.model_id)
    for version in _versions(mlflow_client, task):
        if ORPHAN_TAG not in version.tags and not adapter_dir(settings.adapters_dir, task, int(version.version)).is_dir():
            mlflow_client.set_model_version_tag(
                version.name,
                version.version,
                ORPHAN_TAG,
                "registered by a training that died before its adapter folder was stored",
            )
            found.versions_orphaned.append(int(version.version))
    return found


def _versions(mlflow_client: Any, task: str) -> list[Any]:
    """Every registered version of the task's model (none when it was never registered)."""
    return list(mlflow_client.search_model_versions(f"name = '{registered_model_name(task)}'"))

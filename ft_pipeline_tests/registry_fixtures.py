"""Registered model versions with adapter folders of their own, for tests of promotion, rollback and rollout."""

from __future__ import annotations

from ft_pipeline.settings import Settings
from ft_pipeline.training.tracking import client, registered_model_name


def register_versions(settings: Settings, task: str, versions: tuple[int, ...] = (1, 2, 3)) -> None:
    """The task's registered model with `versions`, each pointing at an (empty) adapter folder."""
    mlflow = client(settings)
    mlflow.create_registered_model(registered_model_name(task))
    for version in versions:
        folder = settings.adapters_dir / task / str(version)
        folder.mkdir(parents=True)
        mlflow.create_model_version(registered_model_name(task), source=folder.as_uri())

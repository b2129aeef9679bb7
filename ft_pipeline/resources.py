"""The pipeline resource: where data and stores live, and the settings every asset reads."""

from __future__ import annotations

from typing import Any

from dagster import Config, ConfigurableResource
from pydantic import Field, create_model

from ft_pipeline.settings import Settings, knobs


class PipelineResource(ConfigurableResource):
    """Data dir, MLflow store and base model of a deployment; empty fields fall back to the environment."""

    data_dir: str = Field(default="", description="Overrides FT_DATA_DIR.")
    mlflow_tracking_uri: str = Field(default="", description="Overrides FT_MLFLOW_TRACKING_URI.")
    base_model: str = Field(default="", description="Overrides FT_BASE_MODEL.")

    def settings(self, config: Config | None = None) -> Settings:
        """Environment settings, then this resource's fields, then the run config of one asset."""
        overrides: dict[str, Any] = {
            "data_dir": self.data_dir or None,
            "mlflow_tracking_uri": self.mlflow_tracking_uri or None,
            "base_model": self.base_model or None,
        }
        base = Settings.from_env(**{k: v for k, v in overrides.items() if v})
        if config is None:
            return base
        return base.replace(**{k: v for k, v in config.model_dump().items() if v is not None})


def stage_config(stage: str, name: str) -> type[Config]:
    """A Dagster run-config class holding the knobs of one stage; a field left empty keeps the environment's value."""
    fields: dict[str, Any] = {}
    for f in knobs():
        if f.metadata["stage"] != stage:
            continue
        py_type = _PY_TYPES[str(f.type).split(" ")[0]]
        help_text = f"{f.metadata['help']} Empty: environment variable {f.metadata['env']} or its default."
        fields[f.name] = (py_type | None, Field(default=None, description=help_text))
    return create_model(name, __base__=Config, **fields)


_PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict[str, str]}

"""ft_pipeline: from LLM interaction logs to curated datasets, pattern reports and evaluated LoRA adapters."""

import os

__version__ = "0.1.0"

# Nothing is sent anywhere unless a user asks: every entry point (the CLI, the Dagster code location, servers, the
# client, tests) imports this package first, so the usage telemetry of MLflow, Dagster and the Hugging Face hub is off
# by default; a variable already set in the environment keeps its value.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)

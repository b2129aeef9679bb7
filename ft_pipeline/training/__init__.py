"""Base model, LoRA training, evaluation and serving: no dagster import, runnable on its own."""

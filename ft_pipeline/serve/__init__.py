"""The HTTP side of ft_pipeline: capture routes, API keys and metrics; no dagster import."""

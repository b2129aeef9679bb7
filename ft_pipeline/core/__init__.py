"""Pure logic of ft_pipeline: no dagster import, unit-tested directly."""

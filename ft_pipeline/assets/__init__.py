"""Dagster assets, one module per stage: read, call core/ or training/, write, report."""

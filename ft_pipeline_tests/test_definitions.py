import subprocess
import sys

import dagster as dg

from ft_pipeline.definitions import defs


def test_definitions_load_with_every_stage():
    defs.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "raw_logs",
        "settlements",
        "daily_aggregates",
        "pattern_report",
        "base_model",
        "task_dataset",
        "lora_adapter",
        "adapter_evaluation",
        "champion",
        "rollout",
    }
    checks = {key.name for key in graph.asset_check_keys}
    assert {
        "task_dataset_valid",
        "adapter_beats_base",
        "adapter_beats_champion",
        "no_regressions",
        "champion_live_acceptance",
    } <= checks
    # the promotion step sits downstream of the evaluation its blocking checks guard
    assert graph.get(dg.AssetKey("champion")).parent_keys == {dg.AssetKey("adapter_evaluation")}
    assert graph.get(dg.AssetKey("rollout")).parent_keys == {dg.AssetKey("champion")}
    assert {job.name for job in defs.jobs} == {"ingest_job", "retrain_job", "resettle_job", "rollout_job"}
    assert {s.name for s in defs.sensors} == {"inbox_sensor", "retrain_sensor", "feedback_sensor", "rollout_sensor"}
    assert {s.name for s in defs.schedules} == {"daily_ingest_schedule", "nightly_retrain_schedule"}


def test_writers_of_shared_state_take_a_pool_slot():
    pools = {spec.key.to_user_string(): node.node_def.pool for node in defs.assets for spec in node.specs}
    assert {
        name: pools[name] for name in ("raw_logs", "settlements", "pattern_report", "lora_adapter", "adapter_evaluation")
    } == {
        "raw_logs": "ingest",
        "settlements": "settlements",
        "pattern_report": "report",
        "lora_adapter": "gpu",
        "adapter_evaluation": "gpu",
    }


def test_loading_the_code_location_imports_no_training_stack():
    # Every code-location load (webserver, daemon, each run) pays the import time of what definitions imports.
    code = "import sys, ft_pipeline.definitions; print(sorted(m for m in ('torch', 'transformers', 'peft', 'mlflow', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_telemetry_is_off_in_every_entry_point():
    """The CLI, the code location and the client each turn MLflow's and Dagster's usage telemetry off, unasked."""
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DAGSTER_DISABLE_TELEMETRY")}
    probe = (
        "from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY; import os; "
        "print(MLFLOW_DISABLE_TELEMETRY.get(), os.environ.get('DAGSTER_DISABLE_TELEMETRY'))"
    )
    for module, expected in (("os", ["False", "None"]), *((m, ["True", "true"]) for m in ENTRY_POINTS)):
        out = subprocess.run([sys.executable, "-c", f"import {module}; {probe}"], env=clean, capture_output=True, text=True)
        assert out.stdout.split() == expected, (module, out.stderr[-500:])


ENTRY_POINTS = ("ft_pipeline.cli", "ft_pipeline.definitions", "ft_pipeline.client", "ft_pipeline.training.lora")

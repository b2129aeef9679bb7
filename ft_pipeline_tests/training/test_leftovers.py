"""Leftovers of killed trainings: the next training of the task removes, fails and marks them, never a live one's."""

import subprocess
import sys

from ft_pipeline.core.scratch import scratch_root
from ft_pipeline.settings import Settings
from ft_pipeline.training.leftovers import ADAPTER_SCRATCH, ORPHAN_TAG, finish_dead_trainings
from ft_pipeline.training.tracking import Tracker, client, registered_model_name

STAGER = """
import sys, time
from pathlib import Path
from ft_pipeline.core.scratch import scratch_dir
with scratch_dir(Path(sys.argv[1]), "adapter") as folder:
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    print("ready", flush=True)
    time.sleep(60)
"""


def _stager(root):
    proc = subprocess.Popen([sys.executable, "-c", STAGER, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_dead_trainings_are_finished_and_live_ones_left_alone(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    task = "qa"
    dead, live = _stager(settings.root), _stager(settings.root)
    dead.kill()
    dead.wait()
    legacy = settings.adapters_dir / task / ".staging-0123"
    legacy.mkdir(parents=True)
    # a killed training: its run stays RUNNING and its version was registered before the adapter folder moved in
    killed = Tracker.start(settings, task, {"lr": 1})
    killed.register(task, "adapter", {})
    pending = client(settings).create_logged_model(
        killed.client.get_run(killed.run_id).info.experiment_id, source_run_id=killed.run_id
    )
    (settings.adapters_dir / task / "2").mkdir(parents=True)
    kept = Tracker.start(settings, task, {"lr": 2})
    kept.register(task, "adapter", {})
    kept.finish()
    try:
        found = finish_dead_trainings(settings, task)
        assert len(found.staging_removed) == 2 and not legacy.exists()
        assert len(list(scratch_root(settings.root).glob(f"{ADAPTER_SCRATCH}-*/adapter_model.safetensors"))) == 1
        assert found.runs_failed == [killed.run_id] and found.versions_orphaned == [1]
        mlflow = client(settings)
        assert found.models_failed == [pending.model_id] and str(mlflow.get_logged_model(pending.model_id).status) == "FAILED"
        assert mlflow.get_run(killed.run_id).info.status == "FAILED"
        assert mlflow.get_run(kept.run_id).info.status == "FINISHED"
        assert ORPHAN_TAG in mlflow.get_model_version(registered_model_name(task), "1").tags
        assert ORPHAN_TAG not in mlflow.get_model_version(registered_model_name(task), "2").tags
        assert not finish_dead_trainings(settings, task)  # nothing is left the second time
    finally:
        live.kill()
        live.wait()

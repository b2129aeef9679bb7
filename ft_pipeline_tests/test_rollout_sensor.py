"""The promotion step starts a rollout when a champion exists; rollout_sensor requests a run per active rollout
whenever its evidence changed, and the rollout asset steps it in Dagster."""

from datetime import UTC, datetime

import dagster as dg

from ft_pipeline.assets.champion import champion
from ft_pipeline.assets.rollout import rollout
from ft_pipeline.core.io import write_json_atomic
from ft_pipeline.core.lineage import ADAPTER_CONFIG
from ft_pipeline.jobs import rollout_job
from ft_pipeline.resources import PipelineResource
from ft_pipeline.sensors import rollout_sensor
from ft_pipeline.serve.rollout import read_rollout
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import champion_history, promote
from ft_pipeline.training.evaluation import evaluation_path
from ft_pipeline.training.tracking import client, registered_model_name
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs

TASK = "support"


def tick(instance: dg.DagsterInstance, settings: Settings) -> dg.SensorResult | dg.SkipReason:
    """One sensor evaluation, with the partitions it asks for applied to the instance as the daemon would."""
    resources = {"pipeline": PipelineResource(data_dir=settings.data_dir)}
    with (
        dg.build_sensor_context(instance=instance, resources=resources) as context,
        dg.partition_loading_context(dynamic_partitions_store=instance),
    ):
        result = rollout_sensor(context)
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_the_sensor_steps_active_rollouts_once_per_change_of_evidence(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_ROLLOUT_MIN_REVIEWED", "5")
    settings = Settings.from_env(data_dir=str(tmp_path))
    assert rollout_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    mlflow = client(settings)
    mlflow.create_registered_model(registered_model_name(TASK))
    for version in (1, 2):
        (settings.adapters_dir / TASK / str(version)).mkdir(parents=True)
        mlflow.create_model_version(registered_model_name(TASK), source=(settings.adapters_dir / TASK / str(version)).as_uri())
    resources = {"pipeline": PipelineResource(data_dir=str(tmp_path))}
    with dg.DagsterInstance.ephemeral() as instance:
        assert isinstance(tick(instance, settings), dg.SkipReason)
        promote(settings, TASK, 1, "the first adapter")
        # the promotion step of an evaluated v2 starts its rollout instead of moving the champion
        for version in (1, 2):
            write_json_atomic({}, settings.adapters_dir / TASK / str(version) / ADAPTER_CONFIG)
        evaluation = {"version": 2, "decision": "promote", "champion_before": 1, "reasons": ["beats v1"]}
        write_json_atomic(evaluation, evaluation_path(settings, TASK, 2))
        instance.add_dynamic_partitions("tasks", [TASK])
        promoted = dg.materialize([champion], partition_key=TASK, instance=instance, resources=resources)
        metadata = promoted.asset_materializations_for_node("champion")[0].metadata
        assert metadata["promoted"].value is False and metadata["champion"].value == 1
        assert metadata["rollout_stage_percent"].value == 10.0 and read_rollout(settings, TASK).candidate == 2
        first = tick(instance, settings).run_requests
        assert [(r.partition_key, r.tags["ft_pipeline/rollout_stage"]) for r in first] == [(TASK, "10")]
        # nothing new: the same run key, which Dagster launches once
        assert [r.run_key for r in tick(instance, settings).run_requests] == [first[0].run_key]
        state = read_rollout(settings, TASK)
        now = datetime.now(UTC)
        rows = [
            raw_log(f"c{i}", task=TASK, timestamp=now, experiment_id=state.experiment_id, variant=side, latency_ms=50.0)
            for i, side in enumerate(["candidate"] * 6 + ["champion"] * 20)
        ]
        write_raw_logs(settings.lake_dir, now.date().isoformat(), rows)
        (request,) = tick(instance, settings).run_requests
        assert request.run_key != first[0].run_key
        defs = dg.Definitions(assets=[rollout], jobs=[rollout_job], resources=resources)
        run = defs.resolve_job_def("rollout_job").execute_in_process(instance=instance, partition_key=request.partition_key)
        assert run.success
        (materialization,) = run.asset_materializations_for_node("rollout")
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        assert metadata["action"] == "advance" and metadata["stage_percent"] == 50.0
        assert metadata["candidate_reviewed"] == 6 and metadata["champion_acceptance_rate"] == 1.0
        assert champion_history(settings, TASK)[-1]["action"] == "rollout-advance"
        # the next stage is a new key even before new evidence arrives
        assert tick(instance, settings).run_requests[0].run_key != request.run_key

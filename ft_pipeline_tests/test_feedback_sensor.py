"""Late feedback on an older day's calls: raw_logs reports it, and the feedback sensor settles exactly that day again, once."""

import json

from dagster import DagsterInstance, Definitions, RunRequest, build_sensor_context, materialize

from ft_pipeline.assets.daily_aggregates import daily_aggregates
from ft_pipeline.assets.pattern_report import pattern_report
from ft_pipeline.assets.raw_logs import raw_logs
from ft_pipeline.assets.settlements import settlements
from ft_pipeline.core.feedback import stale_days
from ft_pipeline.jobs import resettle_job
from ft_pipeline.resources import PipelineResource
from ft_pipeline.sensors import feedback_sensor
from ft_pipeline.settings import Settings

CALL = {"log_id": "c1", "timestamp": "2024-03-01T10:00:00Z", "task": "game", "prompt": "p", "output": "a fine answer"}
LATE = {"kind": "feedback", "log_id": "c1", "feedback_at": "2024-03-04T09:00:00Z", "decision": "accepted"}
WAITING = {**LATE, "log_id": "c9"}


def tick(instance, defs):
    with build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        data = feedback_sensor.evaluate_tick(context)
        return data.run_requests or data.skip_message


def test_late_feedback_resettles_the_call_day(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    resources = {"pipeline": PipelineResource(data_dir=str(tmp_path))}
    defs = Definitions(
        assets=[raw_logs, settlements, daily_aggregates, pattern_report],
        jobs=[resettle_job],
        sensors=[feedback_sensor],
        resources=resources,
    )
    with DagsterInstance.ephemeral() as instance:
        (inbox / "calls.jsonl").write_text(json.dumps(CALL) + "\n")
        assert materialize([raw_logs, settlements], resources=resources, instance=instance, partition_key="2024-03-01").success
        assert isinstance(tick(instance, defs), str)

        (inbox / "feedback.jsonl").write_text(json.dumps(LATE) + "\n" + json.dumps(WAITING) + "\n")
        ingested = materialize([raw_logs], resources=resources, instance=instance, partition_key="2024-03-04")
        meta = ingested.asset_materializations_for_node("raw_logs")[0].metadata
        assert (meta["feedback_stored"].value, meta["feedback_waiting"].value) == (2, 1)
        assert meta["stale_days"].value == ["2024-03-01"]

        (request,) = tick(instance, defs)
        assert isinstance(request, RunRequest) and request.partition_key == "2024-03-01"
        assert request.run_key == f"resettle:2024-03-01:{ingested.run_id}"
        run = defs.resolve_job_def("resettle_job").execute_in_process(instance=instance, partition_key="2024-03-01")
        assert run.success
        meta = run.asset_materializations_for_node("settlements")[0].metadata
        assert (meta["settled"].value, meta["with_feedback"].value) == (
            1,
            1,
        )  # pending when logged, accepted by the late feedback
        assert stale_days(Settings.from_env(data_dir=str(tmp_path))) == {}
        assert isinstance(tick(instance, defs), str)

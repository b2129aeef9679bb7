"""inbox_sensor: new or changed inbox files request ingest runs for the days they hold, once."""

import json

from dagster import DagsterInstance, SkipReason, build_sensor_context

from ft_pipeline.resources import PipelineResource
from ft_pipeline.sensors import inbox_sensor


def tick(instance, cursor, data_dir):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": PipelineResource(data_dir=str(data_dir))})
    return inbox_sensor(context), context.cursor


def test_new_and_changed_files_request_their_days(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    record = {"log_id": "a", "timestamp": "2024-03-01T23:30:00-01:00", "task": "game", "prompt": "p", "output": "o"}
    (inbox / "a.jsonl").write_text(json.dumps(record) + "\n")
    with DagsterInstance.ephemeral() as instance:
        requests, cursor = tick(instance, None, tmp_path)
        assert [r.partition_key for r in requests] == ["2024-03-02"]
        skipped, cursor = tick(instance, cursor, tmp_path)
        assert isinstance(skipped, SkipReason)
        (inbox / "a.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "log_id": "b", "timestamp": "2024-03-05T01:00:00Z"}) + "\n")
        (inbox / ".spool").mkdir()
        (inbox / ".spool" / "c.jsonl").write_text(json.dumps({**record, "timestamp": "2024-04-01T00:00:00Z"}) + "\n")
        requests, _ = tick(instance, cursor, tmp_path)
        assert [r.partition_key for r in requests] == ["2024-03-02", "2024-03-05"]
        assert requests[0].run_key != "inbox:2024-03-02:" and len({r.run_key for r in requests}) == 2

"""inbox_sensor: new or changed inbox files request one ingest run over the range of days they hold, once; dead writers'
spools are published first."""

import json

import pytest
from dagster import DagsterInstance, DefaultSensorStatus, Definitions, RunRequest, build_sensor_context

from ft_pipeline.assets.daily_aggregates import daily_aggregates
from ft_pipeline.assets.pattern_report import pattern_report
from ft_pipeline.assets.raw_logs import raw_logs
from ft_pipeline.assets.settlements import settlements
from ft_pipeline.core.ingest import inbox_files, ingest
from ft_pipeline.core.io import partition_dates
from ft_pipeline.jobs import ingest_job
from ft_pipeline.resources import PipelineResource
from ft_pipeline.sensors import inbox_sensor
from ft_pipeline.settings import Settings
from ft_pipeline_tests.spool_fixtures import dead_spool

RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def tick(instance, cursor, data_dir):
    """One evaluation of the sensor: its run requests or skip message, and the new cursor."""
    resources = {"pipeline": PipelineResource(data_dir=str(data_dir))}
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        data = inbox_sensor.evaluate_tick(context)
        return (data.run_requests or data.skip_message), data.cursor


def test_new_and_changed_files_request_one_run_over_their_days(tmp_path):
    assert inbox_sensor.default_status == DefaultSensorStatus.RUNNING
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    record = {"log_id": "a", "timestamp": "2024-03-01T23:30:00-01:00", "task": "game", "prompt": "p", "output": "o"}
    (inbox / "a.jsonl").write_text(json.dumps(record) + "\n")
    with DagsterInstance.ephemeral() as instance:
        (request,), cursor = tick(instance, None, tmp_path)
        assert isinstance(request, RunRequest) and request.partition_key is None
        assert tuple(request.tags[t] for t in RANGE) == ("2024-03-02", "2024-03-02")
        skipped, cursor = tick(instance, cursor, tmp_path)
        assert isinstance(skipped, str)
        (inbox / "a.jsonl").write_text(
            json.dumps(record) + "\n" + json.dumps({**record, "log_id": "b", "timestamp": "2024-03-05T01:00:00Z"}) + "\n"
        )
        (inbox / ".spool").mkdir()
        (inbox / ".spool" / "c.jsonl").write_text(json.dumps({**record, "timestamp": "2024-04-01T00:00:00Z"}) + "\n")
        (again,), _ = tick(instance, cursor, tmp_path)
        assert tuple(again.tags[t] for t in RANGE) == ("2024-03-02", "2024-03-05") and again.run_key != request.run_key
        # the request launches as is: one run of ingest_job over the range, which stores both days and refreshes the report
        defs = Definitions(
            assets=[raw_logs, settlements, daily_aggregates, pattern_report],
            jobs=[ingest_job],
            resources={"pipeline": PipelineResource(data_dir=str(tmp_path))},
        )
        run = defs.resolve_job_def("ingest_job").execute_in_process(instance=instance, tags=again.tags)
        assert run.success and partition_dates(tmp_path / "lake", "raw_logs") == ["2024-03-02", "2024-03-05"]
        # every day of the range is aggregated, the days between with empty partitions
        assert partition_dates(tmp_path / "lake", "daily_aggregates") == ["2024-03-02", "2024-03-03", "2024-03-04", "2024-03-05"]
        report = json.loads((tmp_path / "reports" / "pattern_report.json").read_text())
        assert report["totals"]["records"] == 2 and {c.check_name for c in run.get_asset_check_evaluations()}


def test_a_tick_publishes_a_dead_writers_spool_and_requests_its_day(tmp_path, capfd):
    inbox = tmp_path / "inbox"
    record = {"log_id": "lost", "timestamp": "2024-03-01T12:00:00Z", "task": "game", "prompt": "p", "output": "o"}
    left = dead_spool(inbox, [json.dumps(record)])
    with DagsterInstance.ephemeral() as instance:
        (request,), _ = tick(instance, None, tmp_path)
    assert tuple(request.tags[t] for t in RANGE) == ("2024-03-01", "2024-03-01")
    assert not left.exists()
    (recovered,) = inbox.glob("client-recovered-*.jsonl")
    assert json.loads(recovered.read_text()) == record
    # the sensor logs through dagster's own handler, which writes to stderr
    assert "recovered 1 spool file(s) of dead writers" in capfd.readouterr().err


@pytest.mark.parametrize("archive", ["true", "false"])
def test_the_cursor_holds_only_files_not_yet_ingested(tmp_path, monkeypatch, archive):
    """Over many files, archived or kept in place, the cursor never grows beyond the files waiting for an ingest."""
    monkeypatch.setenv("FT_ARCHIVE_INBOX", archive)
    settings = Settings.from_env(data_dir=str(tmp_path))
    inbox = settings.inbox_dir
    inbox.mkdir()
    record = {"log_id": "a", "timestamp": "2024-03-01T12:00:00Z", "task": "game", "prompt": "p", "output": "o"}
    cursor, sizes = None, []
    with DagsterInstance.ephemeral() as instance:
        for round_no in range(12):
            for n in range(4):
                (inbox / f"f{round_no}-{n}.jsonl").write_text(json.dumps({**record, "log_id": f"{round_no}-{n}"}) + "\n")
            (request,), cursor = tick(instance, cursor, tmp_path)
            assert isinstance(request, RunRequest) and len(json.loads(cursor)) == 4
            ingest(settings, last_day="2024-03-31")
            skipped, cursor = tick(instance, cursor, tmp_path)
            assert isinstance(skipped, str) and json.loads(cursor) == {}
            sizes.append(len(cursor))
    assert len(inbox_files(inbox)) == (48 if archive == "false" else 0)
    assert max(sizes) == min(sizes)

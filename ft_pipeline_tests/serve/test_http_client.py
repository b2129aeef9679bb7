"""LogWriter in HTTP mode against a real server: sends calls and feedback in batches, keeps them on disk while it is down."""

import json

import pytest

from ft_pipeline.client import LogWriter, RecordRejected
from ft_pipeline_tests.processes import free_port
from ft_pipeline_tests.serve.server import running_server

RECORD = {"task": "qa", "prompt": "What is 2 + 2?", "output": "4", "decision": "accepted"}


def inbox_ids(data_dir):
    return sorted(json.loads(line)["log_id"] for p in (data_dir / "inbox").glob("*.jsonl") for line in p.read_text().splitlines())


def test_records_written_while_the_server_is_down_are_kept_and_sent_once_it_is_up(tmp_path):
    spool = tmp_path / "client-spool"
    down = LogWriter(url=f"http://127.0.0.1:{free_port()}", spool_dir=spool, flush_seconds=0.1, block_seconds=1.0)
    ids = [down.write({**RECORD, "prompt": f"question {i}"}) for i in range(5)]  # returns at once, server or not
    down.close()
    assert sorted(json.loads(line)["log_id"] for p in spool.iterdir() for line in p.read_text().splitlines()) == sorted(ids)

    data = tmp_path / "data"
    with running_server(data) as url:
        up = LogWriter(url=url, spool_dir=spool, flush_every=2, flush_seconds=0.1, block_seconds=30.0)
        ids.append(up.write(RECORD))
        up.flush()
        up.close()
        assert (up._http.sent, up._http.rejected, up._http.dropped) == (6, 0, 0)
    assert inbox_ids(data) == sorted(ids)
    assert list(spool.iterdir()) == []


def test_feedback_goes_to_its_own_route_and_waits_in_its_own_spool_while_the_server_is_down(tmp_path):
    spool = tmp_path / "client-spool"
    down = LogWriter(url=f"http://127.0.0.1:{free_port()}", spool_dir=spool, flush_seconds=0.1, block_seconds=1.0)
    call = down.write(RECORD)
    down.feedback(call, decision="edited", final_output="Four.", reviewer="ana")
    with pytest.raises(RecordRejected, match="empty_feedback"):  # judged here, before anything is queued
        down.feedback(call)
    down.close()
    kept = [json.loads(line) for p in (spool / "feedback").iterdir() for line in p.read_text().splitlines()]
    assert [(f["log_id"], f["kind"], f["decision"]) for f in kept] == [(call, "feedback", "edited")]

    data = tmp_path / "data"
    with running_server(data) as url:
        up = LogWriter(url=url, spool_dir=spool, flush_seconds=0.1, block_seconds=30.0)
        up.feedback(call, user_rating=5)
        up.close()
        assert (up._http.sent, up._http.rejected, up._http.dropped) == (3, 0, 0)
    lines = [json.loads(line) for p in (data / "inbox").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted((line.get("kind", "call"), line.get("user_rating", 0)) for line in lines) == [
        ("call", 0),
        ("feedback", 0),
        ("feedback", 5),
    ]
    assert {line["log_id"] for line in lines} == {call}
    assert [p for p in spool.rglob("*") if p.is_file()] == []


def test_the_disk_spool_is_bounded_and_counts_what_it_drops(tmp_path):
    spool = tmp_path / "spool"
    writer = LogWriter(url=f"http://127.0.0.1:{free_port()}", spool_dir=spool, flush_seconds=0.1, block_seconds=0.5)
    writer._http.max_spool_bytes = 1000
    for i in range(20):
        writer.write({**RECORD, "prompt": f"question number {i}"})
    writer.close()
    assert sum(p.stat().st_size for p in spool.iterdir()) <= 1000
    assert writer._http.dropped > 0


def test_log_interaction_and_log_feedback_send_to_the_server_at_ft_log_url(tmp_path, monkeypatch):
    import ft_pipeline.client as client

    data = tmp_path / "data"
    with running_server(data) as url:
        monkeypatch.setenv("FT_LOG_URL", url)
        monkeypatch.setenv("HOME", str(tmp_path))  # the default spool folder is under ~/.cache
        monkeypatch.setattr(client, "_default", None)
        log_id = client.log_interaction(**RECORD)
        client.log_feedback(log_id, decision="accepted")
        writer = client.default_writer()
        writer.block_seconds = 30.0
        writer.close()
    assert inbox_ids(data) == [log_id, log_id]

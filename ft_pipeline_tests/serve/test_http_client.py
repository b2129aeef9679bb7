"""LogWriter in HTTP mode against a real server: sends in batches, keeps records on disk while the server is down."""

import json

from ft_pipeline.client import LogWriter
from ft_pipeline_tests.serve.server import free_port, running_server

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


def test_the_disk_spool_is_bounded_and_counts_what_it_drops(tmp_path):
    spool = tmp_path / "spool"
    writer = LogWriter(url=f"http://127.0.0.1:{free_port()}", spool_dir=spool, flush_seconds=0.1, block_seconds=0.5)
    writer._http.max_spool_bytes = 1000
    for i in range(20):
        writer.write({**RECORD, "prompt": f"question number {i}"})
    writer.close()
    assert sum(p.stat().st_size for p in spool.iterdir()) <= 1000
    assert writer._http.dropped > 0


def test_log_interaction_sends_to_the_server_at_ft_log_url(tmp_path, monkeypatch):
    import ft_pipeline.client as client

    data = tmp_path / "data"
    with running_server(data) as url:
        monkeypatch.setenv("FT_LOG_URL", url)
        monkeypatch.setenv("HOME", str(tmp_path))  # the default spool folder is under ~/.cache
        monkeypatch.setattr(client, "_default", None)
        log_id = client.log_interaction(**RECORD)
        writer = client.default_writer()
        writer.block_seconds = 30.0
        writer.close()
    assert inbox_ids(data) == [log_id]

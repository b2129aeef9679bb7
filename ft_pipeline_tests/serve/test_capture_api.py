"""The capture API over real HTTP: calls and feedback judged one by one, accepted ones durable in the inbox, limits, keys, metrics."""

import json
import subprocess
import sys
from datetime import UTC, datetime

import duckdb
import httpx
import pytest

from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import table_glob
from ft_pipeline.serve.keys import KeyStore
from ft_pipeline.settings import Settings
from ft_pipeline_tests.serve.server import REPO, running_server

RECORD = {"task": "qa", "prompt": "What is 2 + 2?", "output": "4", "decision": "accepted"}
FEEDBACK = {"log_id": "call-1", "decision": "edited", "final_output": "Four.", "reviewer": "ana"}


def inbox_lines(data_dir):
    return [json.loads(line) for path in sorted((data_dir / "inbox").glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_a_batch_is_judged_record_by_record_and_only_accepted_records_land(tmp_path):
    with running_server(tmp_path, FT_SERVE_MAX_FIELD_CHARS="1000") as url:
        one = httpx.post(f"{url}/v1/logs", json={**RECORD, "log_id": "given-1"})
        assert one.status_code == 200 and one.json() == {"results": [{"status": "accepted", "log_id": "given-1"}]}
        batch = httpx.post(
            f"{url}/v1/logs",
            json={"records": [RECORD, {"task": "qa", "output": "no prompt"}, "not a record", {**RECORD, "prompt": "x" * 2000}]},
        ).json()["results"]
        assert batch[0]["status"] == "accepted" and len(batch[0]["log_id"]) == 32  # generated
        assert [r.get("reason") for r in batch[1:]] == ["missing_field:prompt", "not_an_object", "field_too_long"]
        assert all(r["status"] == "rejected" and r["detail"] for r in batch[1:])
        metrics = httpx.get(f"{url}/metrics").text
    # the server publishes its spool when it stops: every accepted record is in the inbox, nothing of a rejected one
    lines = inbox_lines(tmp_path)
    assert sorted(line["log_id"] for line in lines) == sorted(["given-1", batch[0]["log_id"]])
    assert 'ft_records_total{reason="missing_field:prompt",route="/v1/logs",status="rejected"} 1.0' in metrics
    assert 'ft_records_total{reason="",route="/v1/logs",status="accepted"} 2.0' in metrics
    assert "ft_request_duration_seconds_bucket" in metrics and "ft_spool_backlog_records" in metrics
    # and ingest reads them like any inbox file
    settings = Settings(data_dir=str(tmp_path))
    assert ingest(settings).new == 2
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{table_glob(settings.lake_dir, 'raw_logs')}')").fetchall() == [(2,)]


def test_limits_refuse_with_clear_errors_and_write_nothing(tmp_path):
    env = {"FT_SERVE_MAX_BODY_BYTES": "4000", "FT_SERVE_MAX_BATCH": "3"}
    with running_server(tmp_path, **env) as url:
        for route, record in [("/v1/logs", RECORD), ("/v1/feedback", FEEDBACK)]:
            big = httpx.post(f"{url}{route}", json={**record, "comment": "y" * 5000})
            assert big.status_code == 413 and big.json()["error"]["reason"] == "body_too_large"
            many = httpx.post(f"{url}{route}", json={"records": [record] * 4})
            assert many.status_code == 413 and many.json()["error"]["reason"] == "batch_too_large"
            broken = httpx.post(f"{url}{route}", content=b'{"task": "qa", ', headers={"content-type": "application/json"})
            assert broken.status_code == 400 and broken.json()["error"]["reason"] == "invalid_json"
    assert inbox_lines(tmp_path) == []


def test_beyond_loopback_every_request_needs_a_key_with_its_scope(tmp_path):
    refused = subprocess.run(
        [sys.executable, "-m", "ft_pipeline.cli", "--data-dir", str(tmp_path), "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert refused.returncode == 2 and "needs API keys" in refused.stderr
    store = KeyStore(tmp_path)
    logger, token = store.create("app", ["log"])
    _, read_token = store.create("dashboards", ["read"])
    assert token not in store.path.read_text() and store.path.stat().st_mode & 0o077 == 0
    marker = "secret-prompt-text-8d1f"
    with running_server(tmp_path, host="0.0.0.0") as url:
        assert httpx.post(f"{url}/v1/logs", json=RECORD).status_code == 401
        assert httpx.post(f"{url}/v1/logs", json=RECORD, headers={"Authorization": "Bearer ftp_x"}).status_code == 401
        scoped = httpx.post(f"{url}/v1/logs", json=RECORD, headers={"Authorization": f"Bearer {read_token}"})
        assert scoped.status_code == 403 and scoped.json()["error"]["reason"] == "missing_scope"
        ok = httpx.post(f"{url}/v1/logs", json={**RECORD, "prompt": marker}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["results"][0]["status"] == "accepted"
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {read_token}"}).status_code == 200
        store.revoke(logger.id)  # takes effect without a restart
        assert httpx.post(f"{url}/v1/logs", json=RECORD, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    access = [json.loads(line) for line in (tmp_path / "logs" / "access.jsonl").read_text().splitlines()]
    assert {"key_id": logger.id, "route": "/v1/logs", "records": 1, "status": 200} in [
        {k: entry[k] for k in ("key_id", "route", "records", "status")} for entry in access
    ]
    assert marker not in (tmp_path / "logs" / "access.jsonl").read_text()


@pytest.mark.parametrize("scopes", [[], ["admin"]])
def test_a_key_needs_known_scopes(tmp_path, scopes):
    with pytest.raises(ValueError, match="scopes must be"):
        KeyStore(tmp_path).create("x", scopes)


def test_keys_cli_creates_lists_and_revokes_without_showing_tokens(tmp_path, capsys):
    from ft_pipeline.cli import main

    assert main(["--data-dir", str(tmp_path), "keys", "create", "app", "--scope", "log", "--scope", "feedback"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    key = KeyStore(tmp_path).authenticate(token)
    assert key is not None and key.scopes == ("feedback", "log")
    assert main(["--data-dir", str(tmp_path), "keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key.id in listing and "active" in listing and token not in listing
    assert main(["--data-dir", str(tmp_path), "keys", "revoke", key.id]) == 0
    assert KeyStore(tmp_path).authenticate(token) is None
    assert main(["--data-dir", str(tmp_path), "keys", "revoke", "nope"]) == 2


def test_feedback_is_judged_record_by_record_and_only_accepted_feedback_lands(tmp_path):
    before = datetime.now(UTC)
    with running_server(tmp_path, FT_SERVE_MAX_FIELD_CHARS="1000") as url:
        call = httpx.post(f"{url}/v1/logs", json={**RECORD, "log_id": "call-1"}).json()
        one = httpx.post(f"{url}/v1/feedback", json=FEEDBACK)
        assert one.status_code == 200 and one.json() == {"results": [{"status": "accepted", "log_id": "call-1"}]}
        batch = [
            {"log_id": "call-1", "user_rating": 5, "feedback_at": "2026-01-02T03:04:05Z", "comment": "great"},
            {"decision": "accepted"},
            {"log_id": "call-1"},
            {"log_id": "call-1", "user_rating": 9},
            {"log_id": "call-1", "decision": "accepted", "feedback_at": "soon"},
            {"kind": "call", "log_id": "call-1", "decision": "accepted"},
            {"log_id": "call-1", "comment": "x" * 2000},
            ["not", "a", "record"],
        ]
        results = httpx.post(f"{url}/v1/feedback", json={"records": batch}).json()["results"]
        # a feedback record is no call: /v1/logs refuses it by the call contract
        misrouted = httpx.post(f"{url}/v1/logs", json={"kind": "feedback", **FEEDBACK}).json()["results"]
        metrics = httpx.get(f"{url}/metrics").text
    after = datetime.now(UTC)
    assert call["results"][0]["status"] == "accepted"
    assert results[0] == {"status": "accepted", "log_id": "call-1"}
    assert [r.get("reason") for r in results[1:]] == [
        "missing_field:log_id",
        "empty_feedback",
        "out_of_range:user_rating",
        "bad_timestamp",
        "bad_enum:kind",
        "field_too_long",
        "not_an_object",
    ]
    assert all(r["status"] == "rejected" and r["detail"] for r in results[1:])
    assert misrouted[0]["status"] == "rejected" and misrouted[0]["reason"] == "bad_enum:kind"
    assert 'ft_records_total{reason="",route="/v1/feedback",status="accepted"} 2.0' in metrics
    assert 'ft_records_total{reason="empty_feedback",route="/v1/feedback",status="rejected"} 1.0' in metrics
    # nothing of a rejected record is written; the accepted ones say their kind, and the server's time when they gave none
    feedback = [line for line in inbox_lines(tmp_path) if line.get("kind") == "feedback"]
    assert [(f.get("decision"), f.get("user_rating")) for f in feedback] == [("edited", None), (None, 5)]
    assert before <= datetime.fromisoformat(feedback[0]["feedback_at"]) <= after
    assert feedback[1]["feedback_at"] == "2026-01-02T03:04:05Z"
    assert len(inbox_lines(tmp_path)) == 3
    result = ingest(Settings(data_dir=str(tmp_path)))
    assert (result.new, result.feedback_new, result.quarantined_total) == (1, 2, 0)


def test_feedback_needs_a_key_with_the_feedback_scope(tmp_path):
    store = KeyStore(tmp_path)
    _, log_token = store.create("app", ["log"])
    _, feedback_token = store.create("reviews", ["feedback"])
    with running_server(tmp_path, host="0.0.0.0") as url:
        assert httpx.post(f"{url}/v1/feedback", json=FEEDBACK).status_code == 401
        scoped = httpx.post(f"{url}/v1/feedback", json=FEEDBACK, headers={"Authorization": f"Bearer {log_token}"})
        assert scoped.status_code == 403 and scoped.json()["error"]["reason"] == "missing_scope"
        assert httpx.post(f"{url}/v1/logs", json=RECORD, headers={"Authorization": f"Bearer {feedback_token}"}).status_code == 403
        ok = httpx.post(f"{url}/v1/feedback", json=FEEDBACK, headers={"Authorization": f"Bearer {feedback_token}"})
        assert ok.status_code == 200 and ok.json()["results"] == [{"status": "accepted", "log_id": "call-1"}]
    assert [line["log_id"] for line in inbox_lines(tmp_path)] == ["call-1"]

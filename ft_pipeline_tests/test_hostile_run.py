"""The hostile inbox through `ft-pipeline run`: exit 0, every line where it belongs, no planted PII past raw, no connection out."""

import ipaddress
import json
import logging
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ft_pipeline.cli import main
from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline_tests.hostile import PII, PII_NEEDLES, record, write_hostile_inbox

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def outbound_attempts(monkeypatch):
    """Refuses, and records, every connection and name lookup that would leave this machine."""
    attempts: list[str] = []
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def local(host) -> bool:
        if host in (None, "", "localhost"):
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
            attempts.append(f"connect {address}")
            raise ConnectionRefusedError(f"outbound connection to {address} blocked by the test")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not local(host if not isinstance(host, bytes) else host.decode()):
            attempts.append(f"lookup {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup of {host} blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture
def hostile_pipeline(tmp_path, tmp_path_factory, monkeypatch):
    """A data dir with the hostile inbox plus enough plain records to train on, a Dagster home, small training knobs."""
    data = tmp_path / "data"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text().replace("data/dagster", str(data / "dagster")))
    env = {
        "FT_DATA_DIR": str(data),
        "DAGSTER_HOME": str(home),
        "FT_BUILTIN_PRETRAIN_STEPS": "10",
        "FT_BUILTIN_VOCAB_SIZE": "512",
        "FT_MAX_STEPS": "4",
        "FT_EVAL_EVERY": "2",
        "FT_MIN_TRAIN_EXAMPLES": "10",
        "FT_VAL_SHARE": "0.3",
        "FT_EVAL_GENERATION_SAMPLES": "2",
        "FT_EVAL_MAX_NEW_TOKENS": "4",
        "FT_TORCH_THREADS": "2",
        "FT_MLFLOW_TRACKING_URI": "",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    expected = write_hostile_inbox(data / "inbox", tmp_path_factory.mktemp("outside"))
    filler = [
        record(f"fill-{i}", prompt=f"Question {i} about plan {i % 7}?", output=f"Answer {i}: plan {i % 7} works.")
        for i in range(60)
    ]
    (data / "inbox" / "filler.jsonl").write_text("".join(json.dumps(r) + "\n" for r in filler))
    expected.valid_ids |= {r["log_id"] for r in filler}
    return data, expected


def text_of(path: Path) -> bytes:
    """What a file holds as text: a parquet file's values, any other file's bytes."""
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False).encode()
    return path.read_bytes()


def test_the_hostile_inbox_runs_clean_and_leaks_nothing(hostile_pipeline, outbound_attempts, capsys, caplog):
    data, expected = hostile_pipeline
    caplog.set_level(logging.DEBUG)
    assert main(["run"]) == 0
    out = capsys.readouterr()

    stored = {
        row["log_id"]
        for d in partition_dates(data / "lake", "raw_logs")
        for row in pq.read_table(partition_file(data / "lake", "raw_logs", d), columns=["log_id"]).to_pylist()
    }
    assert stored == expected.valid_ids
    entries = [json.loads(line) for p in sorted((data / "quarantine").glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert {e["source_file"]: e["reason"] for e in entries if e["line_no"] is None} == expected.bad_files
    assert {(e["source_file"], e["line_no"]): e["reason"] for e in entries if e["line_no"] is not None} == expected.bad_lines
    assert list((data / "adapters").glob("support/*")), "the run trained no adapter"

    # nothing from outside the inbox anywhere; no planted PII past raw_logs and the ingest's quarantine
    raw_stage = [data / "inbox", data / "lake" / "raw_logs"]
    downstream = [
        p
        for p in data.rglob("*")
        if p.is_file() and not any(p.is_relative_to(r) for r in raw_stage) and p.parent != data / "quarantine"
    ]
    assert any(p.is_relative_to(data / "mlflow") for p in downstream) and any(
        p.is_relative_to(data / "dagster") for p in downstream
    )
    needles = [PII_NEEDLES.get(name, value) for name, value in PII.items()]
    raw = b"".join(text_of(p) for p in (data / "lake" / "raw_logs").rglob("*.parquet"))
    assert all(n.encode() in raw for n in needles), "the search would not see a planted value"
    logs = (out.out + out.err + caplog.text).encode()
    leaks = {}
    for path in downstream:
        found = [n for n in needles if n.encode() in text_of(path)]
        if found:
            leaks[str(path.relative_to(data))] = found
    assert not leaks
    assert not [n for n in needles if n.encode() in logs]
    everywhere = b"".join(text_of(p) for p in data.rglob("*") if p.is_file() and not p.is_relative_to(data / "inbox"))
    assert expected.outside_marker.encode() not in everywhere + logs
    assert outbound_attempts == []

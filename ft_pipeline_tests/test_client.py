"""The logging client: contract checks before writing, atomic publishing from many processes, recovery of crashed
writers' spools, variant assignment."""

import json
import multiprocessing
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ft_pipeline import client
from ft_pipeline.client import LogWriter, assign_variant, log_interaction
from ft_pipeline.core import spool
from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.schema import validate_record
from ft_pipeline.core.spool import SpoolOwner, host_name, recover_spools, spool_owner
from ft_pipeline.settings import Settings
from ft_pipeline_tests.spool_fixtures import dead_pid, dead_spool

GOOD = {"task": "customer_support", "prompt": "Where is my order?", "output": "It ships today."}


def inbox_lines(inbox: Path) -> list[str]:
    """Every line of every published inbox file, checking that each file ends with a whole line."""
    lines = []
    for path in sorted(inbox.glob("*.jsonl")):
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n"), path
        lines += text.splitlines()
    return lines


def files_under(folder: Path) -> list[Path]:
    """Every file below a folder, spool included."""
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"output": None}, "missing_field:output"),
        ({"prompt": 42}, "bad_type:prompt"),
        ({"task": "../x"}, "bad_task_name"),
        ({"quality_score": 11}, "out_of_range:quality_score"),
        ({"decision": "maybe"}, "bad_enum:decision"),
        ({"timestamp": "yesterday"}, "bad_timestamp"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "bad_enum:messages"),
    ],
)
def test_a_record_that_breaks_the_contract_raises_and_writes_nothing(tmp_path, change, reason):
    record = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with LogWriter(tmp_path / "inbox") as writer, pytest.raises(ValueError, match=re.escape(reason)):
        writer.write(record)
    assert files_under(tmp_path / "inbox") == []


def test_unserialisable_metadata_raises_and_writes_nothing(tmp_path):
    with LogWriter(tmp_path / "inbox") as writer, pytest.raises(ValueError, match="serialisable"):
        writer.write({**GOOD, "metadata": {"when": object()}})
    assert files_under(tmp_path / "inbox") == []


def test_log_id_and_timestamp_are_filled_and_given_ones_kept(tmp_path):
    naive = datetime(2024, 5, 1, 12, 30)
    with LogWriter(tmp_path) as writer:
        filled = writer.write(GOOD)
        kept = writer.write({**GOOD, "log_id": "mine-1", "timestamp": "2024-05-01T10:00:00+02:00"})
        from_datetime = writer.write({**GOOD, "timestamp": naive})
    rows = {r["log_id"]: r for r in map(json.loads, inbox_lines(tmp_path))}
    assert re.fullmatch(r"[0-9a-f]{32}", filled) and kept == "mine-1"
    assert datetime.fromisoformat(rows[filled]["timestamp"]).utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - datetime.fromisoformat(rows[filled]["timestamp"])).total_seconds()) < 3600
    assert rows["mine-1"]["timestamp"] == "2024-05-01T10:00:00+02:00"
    assert rows[from_datetime]["timestamp"] == "2024-05-01T12:30:00+00:00"
    assert all(validate_record(r) == [] for r in rows.values())


def test_feedback_is_judged_by_its_contract_and_ingested_into_the_feedback_table(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    with LogWriter(settings.inbox_dir) as writer:
        call = writer.write({**GOOD, "decision": "pending"})
        writer.feedback(call, decision="edited", final_output="It ships tomorrow.", reviewer="ana")
        writer.feedback(call, user_rating=4, feedback_at=datetime(2024, 5, 1, 12, 30))
        writer.feedback(call, comment="fine", metadata={"screen": "review"})
        for kwargs, reason in [
            ({}, "empty_feedback"),
            ({"user_rating": 9}, "out_of_range:user_rating"),
            ({"decision": "maybe"}, "bad_enum:decision"),
            ({"decision": "accepted", "feedback_at": "tomorrow"}, "bad_timestamp"),
        ]:
            with pytest.raises(client.RecordRejected) as rejected:
                writer.feedback(call, **kwargs)
            assert rejected.value.reason == reason
        with pytest.raises(client.RecordRejected, match="bad_length:log_id"):
            writer.feedback("", decision="accepted")
    lines = [json.loads(line) for line in inbox_lines(settings.inbox_dir)]
    assert [line.get("kind") for line in lines] == [None, "feedback", "feedback", "feedback"]
    assert lines[2]["feedback_at"] == "2024-05-01T12:30:00+00:00"
    assert abs((datetime.now(UTC) - datetime.fromisoformat(lines[1]["feedback_at"])).total_seconds()) < 3600
    result = ingest(settings)
    assert (result.new, result.feedback_new, result.quarantined_total) == (1, 3, 0)
    stored = [
        row
        for day in partition_dates(settings.lake_dir, "feedback")
        for row in pq.read_table(partition_file(settings.lake_dir, "feedback", day)).to_pylist()
    ]
    assert {(r["log_id"], r["decision"], r["user_rating"], r["comment"]) for r in stored} == {
        (call, "edited", None, None),
        (call, None, 4.0, None),
        (call, None, None, "fine"),
    }


def test_log_feedback_goes_through_the_default_writer(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(client, "_default", None)
    log_id = log_interaction(**GOOD)
    client.log_feedback(log_id, decision="accepted", reviewer="support-lead")
    client.default_writer().close()
    rows = [json.loads(line) for line in inbox_lines(tmp_path / "inbox")]
    assert [(r["log_id"], r.get("kind"), r["decision"]) for r in rows[1:]] == [(log_id, "feedback", "accepted")]


def test_records_appear_in_the_inbox_only_when_published(tmp_path):
    writer = LogWriter(tmp_path, flush_every=3)
    writer.write(GOOD)
    writer.write(GOOD)
    assert inbox_lines(tmp_path) == []
    writer.write(GOOD)
    assert len(inbox_lines(tmp_path)) == 3
    writer.write(GOOD)
    published = writer.flush()
    assert published.parent == tmp_path and published.name.endswith(".jsonl")
    assert writer.flush() is None
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(GOOD)
    assert len(inbox_lines(tmp_path)) == 4
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    assert list((tmp_path / client.SPOOL_DIR).iterdir()) == []


def _write_many(inbox: str, worker: int, count: int) -> None:
    """Write `count` records from one process, publishing every 37 so that files land while others write."""
    with LogWriter(inbox, flush_every=37) as writer:
        for i in range(count):
            writer.write({**GOOD, "log_id": f"w{worker}-{i}", "prompt": f"question {i} from worker {worker} " * 20})


def test_two_processes_writing_at_once_lose_nothing_and_never_show_half_a_line(tmp_path):
    inbox = tmp_path / "inbox"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(inbox), w, 500)) for w in range(2)]
    for process in workers:
        process.start()
    # read the inbox while the writers run: a published file is always complete
    while any(process.is_alive() for process in workers):
        for line in inbox_lines(inbox) if inbox.exists() else []:
            json.loads(line)
    for process in workers:
        process.join()
        assert process.exitcode == 0
    rows = [json.loads(line) for line in inbox_lines(inbox)]
    assert len(rows) == 1000
    assert Counter(r["log_id"].split("-")[0] for r in rows) == {"w0": 500, "w1": 500}
    assert len({r["log_id"] for r in rows}) == 1000
    assert all(validate_record(r) == [] for r in rows)
    assert list((inbox / client.SPOOL_DIR).iterdir()) == []


def _child_writes(writer: LogWriter) -> None:
    """In a forked child: write one record with the inherited writer and close it."""
    writer.write({**GOOD, "log_id": "child"})
    writer.close()


def test_a_forked_child_does_not_publish_the_parents_spool(tmp_path):
    writer = LogWriter(tmp_path)
    writer.write({**GOOD, "log_id": "parent"})
    child = multiprocessing.get_context("fork").Process(target=_child_writes, args=(writer,))
    child.start()
    child.join()
    assert [json.loads(line)["log_id"] for line in inbox_lines(tmp_path)] == ["child"]
    writer.close()
    assert sorted(json.loads(line)["log_id"] for line in inbox_lines(tmp_path)) == ["child", "parent"]


def test_log_interaction_writes_into_the_inbox_of_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(client, "_default", None)
    log_id = log_interaction(**GOOD, decision="accepted", agent="support-bot")
    client.default_writer().close()
    rows = [json.loads(line) for line in inbox_lines(tmp_path / "inbox")]
    assert [(r["log_id"], r["agent"], r["decision"]) for r in rows] == [(log_id, "support-bot", "accepted")]


# a writer process that spools `count` records with nothing published, then either dies by SIGKILL or stays alive
# (telling the test it has spooled) until its stdin closes, when it closes the writer normally
WRITER_SCRIPT = """
import os, signal, sys
from ft_pipeline.client import LogWriter
inbox, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
writer = LogWriter(inbox, flush_every=1_000_000, flush_seconds=3600)
for i in range(count):
    writer.write({"task": "customer_support", "prompt": f"question {i}", "output": "answer", "log_id": f"{mode}-{i}"})
if mode == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
print("spooled", flush=True)
sys.stdin.read()
writer.close()
"""


def crashed_writer(inbox: Path, count: int) -> Path:
    """Run a writer that is killed before it publishes; returns the spool file it left behind, named after it."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(inbox), str(count), "crash"])
    assert writer.wait(timeout=60) == -signal.SIGKILL
    (left,) = (inbox / client.SPOOL_DIR).iterdir()
    assert spool_owner(left.name) == SpoolOwner(host_name(), writer.pid)
    return left


def lake_log_ids(settings: Settings) -> list[str]:
    """The log_ids stored in the raw_logs lake, sorted."""
    return sorted(
        row["log_id"]
        for day in partition_dates(settings.lake_dir, "raw_logs")
        for row in pq.read_table(partition_file(settings.lake_dir, "raw_logs", day), columns=["log_id"]).to_pylist()
    )


def test_a_killed_writers_spool_is_published_by_the_next_writer_and_ingested_whole(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    crashed_writer(settings.inbox_dir, 50)
    assert list(settings.inbox_dir.glob("*.jsonl")) == []

    writer = LogWriter(settings.inbox_dir)
    (recovered,) = writer.recovered
    assert recovered.parent == settings.inbox_dir and recovered.name.startswith("client-recovered-")
    assert list((settings.inbox_dir / client.SPOOL_DIR).iterdir()) == []
    result = ingest(settings)
    assert (result.new, result.quarantined_total) == (50, 0)
    assert lake_log_ids(settings) == sorted(f"crash-{i}" for i in range(50))


def test_a_torn_last_line_is_quarantined_and_the_whole_lines_stored(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    left = crashed_writer(settings.inbox_dir, 5)
    # the process died in the middle of writing its sixth line
    with open(left, "ab") as fh:
        fh.write(b'{"task": "customer_support", "prompt": "quest')
    (recovered,) = recover_spools(settings.inbox_dir)
    result = ingest(settings)
    assert (result.new, dict(result.quarantined)) == (5, {"invalid_json": 1})
    (entry,) = [json.loads(line) for p in settings.quarantine_dir.glob("*.jsonl") for line in p.read_text().splitlines()]
    assert (entry["source_file"], entry["line_no"]) == (recovered.name, 6)
    assert lake_log_ids(settings) == [f"crash-{i}" for i in range(5)]


def test_a_live_writers_spool_is_left_alone_until_it_publishes_itself(tmp_path):
    inbox = tmp_path / "inbox"
    live = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(inbox), "3", "live"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout.readline() == "spooled\n"
        (spooled,) = (inbox / client.SPOOL_DIR).iterdir()
        assert spool_owner(spooled.name).pid == live.pid
        assert recover_spools(inbox) == [] and LogWriter(inbox).recovered == []
        assert spooled.exists() and list(inbox.glob("*.jsonl")) == []
    finally:
        live.communicate("", timeout=60)
    assert live.returncode == 0
    assert sorted(json.loads(line)["log_id"] for line in inbox_lines(inbox)) == ["live-0", "live-1", "live-2"]
    assert [p.name.startswith("client-recovered-") for p in inbox.glob("*.jsonl")] == [False]


def test_another_hosts_spool_and_foreign_files_are_left_alone(tmp_path):
    other_host = dead_spool(tmp_path, [json.dumps(GOOD)], host=host_name() + "-elsewhere")
    foreign = tmp_path / client.SPOOL_DIR / "notes.txt"
    foreign.write_text("not a spool")
    assert recover_spools(tmp_path) == []
    assert other_host.exists() and foreign.exists()


def test_an_empty_dead_spool_is_removed_and_a_legacy_name_counts_as_this_hosts(tmp_path):
    empty = dead_spool(tmp_path, [])
    legacy = tmp_path / client.SPOOL_DIR / f"{dead_pid()}-{uuid.uuid4().hex}.jsonl.part"
    legacy.write_text(json.dumps({**GOOD, "log_id": "legacy"}) + "\n")
    assert spool_owner(legacy.name).host == host_name()
    (_recovered,) = recover_spools(tmp_path)
    assert not empty.exists() and not legacy.exists()
    assert [json.loads(line)["log_id"] for line in inbox_lines(tmp_path)] == ["legacy"]
    assert recover_spools(tmp_path / "no-such-inbox") == []


def test_host_names_are_sanitised_and_parse_back(monkeypatch):
    monkeypatch.setattr(spool.socket, "gethostname", lambda: "büro pc/1")
    name = spool.new_spool_name(4242)
    assert name.startswith("b_ro_pc_1__4242__")
    assert spool_owner(name) == SpoolOwner("b_ro_pc_1", 4242)
    monkeypatch.setattr(spool.socket, "gethostname", lambda: "ends_in__")
    assert spool_owner(spool.new_spool_name(7)) == SpoolOwner("ends_in__", 7)


def test_recoverers_racing_publish_each_spool_exactly_once(tmp_path):
    pid = dead_pid()
    spools = [dead_spool(tmp_path, [json.dumps({**GOOD, "log_id": f"r{i}"})], pid=pid) for i in range(40)]
    # eight listings of the same forty files on four threads: most renames and opens lose to another recoverer
    with ThreadPoolExecutor(4) as pool:
        published = [path for batch in pool.map(recover_spools, [tmp_path] * 8) for path in batch]
    assert len(published) == len(set(published)) == len(spools)
    assert sorted(json.loads(line)["log_id"] for line in inbox_lines(tmp_path)) == sorted(f"r{i}" for i in range(40))
    assert list((tmp_path / client.SPOOL_DIR).iterdir()) == []


def test_assign_variant_is_deterministic_and_depends_on_the_experiment():
    first = [assign_variant("greeting_test", f"user-{i}", ["a", "b"]) for i in range(200)]
    assert first == [assign_variant("greeting_test", f"user-{i}", ["a", "b"]) for i in range(200)]
    other = [assign_variant("another_test", f"user-{i}", ["a", "b"]) for i in range(200)]
    assert first != other


def test_assign_variant_is_uniform_over_fixed_units():
    arms = ["a", "b", "c", "d"]
    counts = Counter(assign_variant("uniformity", f"user-{i}", arms) for i in range(10000))
    expected = 10000 / len(arms)
    chi2 = sum((counts[arm] - expected) ** 2 / expected for arm in arms)
    # 16.27 is the 0.999 quantile of chi-square with 3 degrees of freedom; the unit ids are fixed, so no flakes
    assert chi2 < 16.27, counts


def test_assign_variant_honours_weights():
    counts = Counter(
        assign_variant("weighted", f"user-{i}", {"control": 0.9, "treatment": 0.1, "off": 0.0}) for i in range(10000)
    )
    assert counts["off"] == 0
    assert 0.88 < counts["control"] / 10000 < 0.92
    with pytest.raises(ValueError):
        assign_variant("weighted", "user-1", {"a": 0.0})
    with pytest.raises(ValueError):
        assign_variant("weighted", "user-1", [])

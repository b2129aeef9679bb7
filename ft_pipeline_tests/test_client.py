"""The logging client: contract checks before writing, atomic publishing from many processes, variant assignment."""

import json
import multiprocessing
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ft_pipeline import client
from ft_pipeline.client import LogWriter, assign_variant, log_interaction
from ft_pipeline.core.schema import validate_record

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
    with LogWriter(tmp_path / "inbox") as writer:
        with pytest.raises(ValueError, match=re.escape(reason)):
            writer.write(record)
    assert files_under(tmp_path / "inbox") == []


def test_unserialisable_metadata_raises_and_writes_nothing(tmp_path):
    with LogWriter(tmp_path / "inbox") as writer:
        with pytest.raises(ValueError, match="serialisable"):
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
    assert abs((datetime.now(timezone.utc) - datetime.fromisoformat(rows[filled]["timestamp"])).total_seconds()) < 3600
    assert rows["mine-1"]["timestamp"] == "2024-05-01T10:00:00+02:00"
    assert rows[from_datetime]["timestamp"] == "2024-05-01T12:30:00+00:00"
    assert all(validate_record(r) == [] for r in rows.values())


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
    counts = Counter(assign_variant("weighted", f"user-{i}", {"control": 0.9, "treatment": 0.1, "off": 0.0})
                     for i in range(10000))
    assert counts["off"] == 0
    assert 0.88 < counts["control"] / 10000 < 0.92
    with pytest.raises(ValueError):
        assign_variant("weighted", "user-1", {"a": 0.0})
    with pytest.raises(ValueError):
        assign_variant("weighted", "user-1", [])

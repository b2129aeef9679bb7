"""The demo inbox: reproducible, valid where promised, and holding every planted pattern in measurable amounts."""

import gzip
import json
import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ft_pipeline.core.demo import write_demo_inbox
from ft_pipeline.core.schema import validate_record
from ft_pipeline.settings import Settings

END = datetime(2025, 6, 1, tzinfo=UTC)


def read_lines(inbox: Path) -> list[str]:
    """Every line of every inbox file, in file name order."""
    lines = []
    for path in sorted(inbox.iterdir()):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            lines += fh.read().split("\n")[:-1]
    return lines


def parsed(lines: list[str]) -> list[dict]:
    """The lines that hold a record satisfying the contract, first one per log_id (as ingest keeps them)."""
    records = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not validate_record(record):
            records.setdefault(record["log_id"], record)
    return list(records.values())


def file_bytes(inbox: Path) -> dict[str, bytes]:
    """The bytes of each inbox file by name."""
    return {p.name: p.read_bytes() for p in sorted(inbox.iterdir())}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo (3000 records, 30 days) as (summary, lines, valid records)."""
    inbox = tmp_path_factory.mktemp("demo") / "inbox"
    summary = write_demo_inbox(inbox, end=END)
    lines = read_lines(inbox)
    return inbox, summary, lines, parsed(lines)


def acceptance(records: list[dict]) -> tuple[float, int]:
    """Accepted share of reviewed records, and how many were reviewed."""
    reviewed = [r for r in records if r.get("decision", "pending") != "pending"]
    return sum(r["decision"] == "accepted" for r in reviewed) / len(reviewed), len(reviewed)


def z_score(a: list[dict], b: list[dict]) -> float:
    """Two-proportion z statistic of the acceptance rates of two groups."""
    (pa, na), (pb, nb) = acceptance(a), acceptance(b)
    pooled = (pa * na + pb * nb) / (na + nb)
    return (pb - pa) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))


def luhn_valid(number: str) -> bool:
    """Whether a card number passes the Luhn check."""
    digits = [int(d) for d in number if d.isdigit()][::-1]
    return sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits)) % 10 == 0


def test_same_seed_gives_identical_bytes_and_another_seed_different(tmp_path):
    write_demo_inbox(tmp_path / "one", records=300, seed=3, end=END)
    write_demo_inbox(tmp_path / "two", records=300, seed=3, end=END)
    write_demo_inbox(tmp_path / "three", records=300, seed=4, end=END)
    assert file_bytes(tmp_path / "one") == file_bytes(tmp_path / "two")
    other = file_bytes(tmp_path / "three")
    assert all(content != other[name.replace("demo-3", "demo-4")] for name, content in file_bytes(tmp_path / "one").items())


def test_files_and_summary_match(demo):
    inbox, summary, lines, records = demo
    names = sorted(p.name for p in inbox.iterdir())
    assert names == sorted(summary["files"]) and len(names) == 4
    assert sum(n.endswith(".jsonl.gz") for n in names) == 1 and sum(n.endswith(".jsonl") for n in names) == 3
    assert summary["lines"] == len(lines) == 3000 + 10
    assert len({r["log_id"] for r in records}) == summary["records"] == 3000
    assert Counter(r["task"] for r in records) == summary["tasks"]


def test_bad_lines_are_the_planted_ones(demo):
    _, summary, lines, _ = demo
    found = Counter()
    for line in lines:
        if not line:
            found["blank"] += 1
            continue
        try:
            problems = validate_record(json.loads(line))
        except json.JSONDecodeError:
            problems = ["invalid_json"]
        found.update(problems)
    assert found == {
        "blank": 1,
        "invalid_json": 1,
        "missing_field:output": 1,
        "bad_task_name": 1,
        "out_of_range:quality_score": 1,
        "bad_enum:decision": 1,
        "bad_timestamp": 1,
        "bad_type:prompt": 1,
    }
    assert summary["blank_lines"] == 1 and summary["exact_duplicates"] == 1
    assert set(summary["bad_lines"]) == set(found) - {"blank"} | {"conflicting_duplicate"}
    non_blank = [line for line in lines if line]
    assert len(non_blank) - len(set(non_blank)) == 1
    distinct_valid = len(non_blank) - 1 - sum(found.values()) + found["blank"]
    assert distinct_valid - len(parsed(lines)) == 1, "one conflicting duplicate: same log_id, different content"


def test_records_cover_the_window_and_every_field(demo):
    _, _, _, records = demo
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in records]
    assert END - timedelta(days=30) <= min(stamps) and max(stamps) < END
    assert len({s.date() for s in stamps}) == 30
    assert {r["task"] for r in records} == {"customer_support", "sql_generation", "game_master", "character_chat"}
    assert {"The Entrepreneur", "peter", "support-bot", "sql-helper"} <= {r["agent"] for r in records}
    assert {r["decision"] for r in records if "decision" in r} == {"accepted", "edited", "rejected", "pending"}
    assert any("decision" not in r for r in records)
    for field in (
        "system_prompt",
        "messages",
        "final_output",
        "quality_score",
        "user_rating",
        "confidence",
        "topic",
        "reasoning_mode",
        "model",
        "adapter_version",
        "user_id",
        "experiment_id",
        "variant",
        "attempt",
        "failure_reasons",
        "latency_ms",
        "cost_usd",
        "prompt_tokens",
        "completion_tokens",
        "metadata",
    ):
        assert sum(field in r for r in records) >= 100, field
    assert len({r["topic"] for r in records if r["task"] == "character_chat"}) >= 5
    assert all(r["final_output"] != r["output"] for r in records if r.get("decision") == "edited")


def test_retries_improve_acceptance(demo):
    _, _, _, records = demo
    rates = [acceptance([r for r in records if r["attempt"] == attempt])[0] for attempt in (1, 2, 3)]
    assert rates[0] < rates[1] < rates[2]
    reasons = Counter(reason for r in records for reason in r.get("failure_reasons", []))
    assert {"too_formal", "poor_engagement", "wrong_sql"} <= set(reasons)
    assert all(r.get("failure_reasons") for r in records if r["attempt"] > 1)


def test_one_experiment_has_a_real_difference_and_the_other_none(demo):
    _, _, _, records = demo
    arms = {(r["experiment_id"], r["variant"]): [] for r in records if "experiment_id" in r}
    for r in records:
        if "experiment_id" in r:
            arms[(r["experiment_id"], r["variant"])].append(r)
    assert set(arms) == {
        ("greeting_test", "a"),
        ("greeting_test", "b"),
        ("sql_prompt_v2", "control"),
        ("sql_prompt_v2", "treatment"),
    }
    assert acceptance(arms[("greeting_test", "b")])[0] - acceptance(arms[("greeting_test", "a")])[0] > 0.1
    assert z_score(arms[("greeting_test", "a")], arms[("greeting_test", "b")]) > 3
    assert abs(z_score(arms[("sql_prompt_v2", "control")], arms[("sql_prompt_v2", "treatment")])) < 1.96


def test_one_agent_regresses_in_the_last_week_and_another_holds(demo):
    _, _, _, records = demo
    cut = END - timedelta(days=7)

    def before_after(agent):
        mine = [r for r in records if r["agent"] == agent]
        return (
            acceptance([r for r in mine if datetime.fromisoformat(r["timestamp"]) < cut]),
            acceptance([r for r in mine if datetime.fromisoformat(r["timestamp"]) >= cut]),
        )

    (before, _), (after, n_after) = before_after("peter")
    assert before - after > 0.2 and n_after >= 50
    (before, _), (after, _) = before_after("The Entrepreneur")
    assert abs(before - after) < 0.1


def test_editors_have_habits(demo):
    _, _, _, records = demo
    edited = [r for r in records if r.get("decision") == "edited"]
    support = [r for r in edited if r["agent"] == "support-bot"]
    deleted = [
        r for r in support if "As an AI language model," in r["output"] and "As an AI language model," not in r["final_output"]
    ]
    assert len(deleted) / len(support) > 0.6
    billing = [r for r in edited if r["agent"] == "billing-bot"]
    closing = "Let me know if you need anything else."
    added = [r for r in billing if closing in r["final_output"] and closing not in r["output"]]
    assert len(added) / len(billing) > 0.6


def test_texts_hold_a_little_pii(demo):
    _, _, _, records = demo
    text = "\n".join(f"{r['prompt']}\n{r['output']}\n{r.get('final_output') or ''}" for r in records)
    assert re.search(r"[\w.]+@example\.com", text)
    assert re.search(r"\+1 \d{3}-\d{3}-\d{4}", text)
    assert re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", text)
    assert re.search(r"\bsk-[A-Za-z0-9]{32}\b", text)
    cards = re.findall(r"\b\d{4} \d{4} \d{4} \d{4}\b", text)
    assert cards and all(luhn_valid(card) for card in cards)
    with_pii = [r for r in records if re.search(r"@example\.com|\+1 \d{3}-|\bsk-|\d{4} \d{4} \d{4}", r["prompt"])]
    assert 0 < len(with_pii) < len(records) * 0.2


def test_enough_settled_training_records_with_consistent_answers(demo):
    _, _, _, records = demo
    settings = Settings()

    def trainable(r):
        checks = (
            (r.get("quality_score"), settings.min_quality_score),
            (r.get("confidence"), settings.min_confidence),
            (r.get("user_rating"), settings.min_user_rating),
        )
        return r.get("decision") in ("accepted", "edited") and all(v is None or v >= low for v, low in checks)

    counts = Counter(r["task"] for r in records if trainable(r))
    assert all(count >= 150 for count in counts.values()) and len(counts) == 4, counts
    # datasets drop near-duplicate (prompt, answer) pairs, so the templates must vary enough to leave plenty
    distinct = Counter(
        task for task, _, _ in {(r["task"], r["prompt"], r.get("final_output") or r["output"]) for r in records if trainable(r)}
    )
    assert all(count >= 150 for count in distinct.values()), distinct
    finals = {
        task: [r.get("final_output") or r["output"] for r in records if trainable(r) and r["task"] == task] for task in counts
    }
    assert all(
        re.fullmatch(r"SELECT (.+) FROM (customers|orders|products|employees) (WHERE|ORDER BY) .+;", f)
        for f in finals["sql_generation"]
    )
    assert all(re.match(r"Hi \w+, thanks for reaching out\. ", f) for f in finals["customer_support"])
    assert all(f.endswith("What do you do next?") for f in finals["game_master"])


def test_default_end_is_today_midnight_utc_and_nothing_is_left_half_written(tmp_path):
    write_demo_inbox(tmp_path, records=50, days=3)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in parsed(read_lines(tmp_path))]
    assert midnight - timedelta(days=3) <= min(stamps) and max(stamps) < midnight
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "demo-0-1.jsonl",
        "demo-0-2.jsonl",
        "demo-0-3.jsonl",
        "demo-0-4.jsonl.gz",
    ]

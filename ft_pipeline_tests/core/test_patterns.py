"""Tests of the pattern report: planted patterns in generated logs are recovered."""

import json
import random
import threading
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import numpy as np
import orjson
import pyarrow as pa
import pytest

from ft_pipeline.core import patterns
from ft_pipeline.core.io import partition_file, write_large_json_atomic, write_parquet_atomic
from ft_pipeline.core.locks import hold
from ft_pipeline.core.patterns import (
    MERGE_SHARE,
    _regressions,
    _stitch_windows,
    _window_overlap,
    build_report,
    jsonable,
    longest_phrases,
    publish_report,
    render_markdown,
)
from ft_pipeline.core.schema import RAW_LOG_SCHEMA
from ft_pipeline.settings import Settings
from ft_pipeline_tests.gsm8k import gsm8k_records
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs

AS_OF = date(2024, 6, 30)
DAYS = 30
EMAIL = "jane.doe@example.com"
FILLER = ["sun", "river", "stone", "cloud", "apple", "field", "window", "garden", "music", "paper"]

SETTLED_SCHEMA = pa.schema(
    [
        *[RAW_LOG_SCHEMA.field(n) for n in ("log_id", "timestamp", "task", "decision", "agent", "output")],
        ("final_text", pa.string()),
        ("retained", pa.float64()),
        ("deleted_spans", pa.list_(pa.string())),
        ("added_spans", pa.list_(pa.string())),
    ]
)


def _decision(i: int, acceptance: float) -> str:
    """Deterministic decision for the i-th record of a cell: exactly `acceptance` of each ten accepted."""
    slot = i % 10
    accepted = round(acceptance * 10)
    if slot < accepted:
        return "accepted"
    return "edited" if slot % 2 == 0 else "rejected"


def planted_records(seed: int = 7) -> list[dict]:
    """Raw records with planted patterns: a chatty agent whose edits delete 'As an AI language model' and add
    a sign-off, a steady agent, a slipping agent (acceptance 80% then 30% in the last 7 days), three experiments
    (a real difference, none, one too small for chi-square), retries that help, and an email as a user_id."""
    rng = random.Random(seed)
    records = []

    def add(day: date, i: int, **fields) -> None:
        n = len(records)
        records.append(
            raw_log(
                f"log-{n:05d}",
                **{
                    "timestamp": datetime(day.year, day.month, day.day, 12, i % 60, tzinfo=UTC),
                    "task": "chat",
                    "prompt": f"question {n}",
                    "output": f"answer {n}",
                    "final_output": None,
                    "quality_score": 8.0,
                    "confidence": 0.9,
                    "user_id": EMAIL if n % 5 == 0 else f"user{n % 3}",
                    "topic": "billing" if n % 2 else "shipping",
                    "experiment_id": None,
                    "variant": None,
                    "attempt": 1,
                    "failure_reasons": None,
                    "latency_ms": 300.0 + rng.random() * 100,
                    "cost_usd": 0.001,
                    **fields,
                },
            )
        )

    for back in range(DAYS):
        day = AS_OF - timedelta(days=back)
        for i in range(10):
            add(day, i, agent="steady", decision=_decision(i, 0.7))
            add(
                day,
                i,
                agent="slipping",
                decision=_decision(i, 0.3 if back < 7 else 0.8),
                failure_reasons=["too_formal"] if i % 3 == 0 else None,
            )
            add(day, i, agent="chatty", decision=_decision(i, 0.2))
            add(day, i, agent="tester", experiment_id="exp_real", variant="a", decision=_decision(i, 0.3))
            add(day, i, agent="tester", experiment_id="exp_real", variant="b", decision=_decision(i, 0.7))
            add(day, i, agent="tester", experiment_id="exp_null", variant="a", decision=_decision(i, 0.5))
            add(day, i, agent="tester", experiment_id="exp_null", variant="b", decision=_decision(i, 0.5))
            add(day, i, agent="retrier", attempt=1, decision=_decision(i, 0.2), quality_score=6.0)
            add(day, i, agent="retrier", attempt=2, decision=_decision(i, 0.9), quality_score=8.5)
        add(day, 0, agent="steady", decision="pending")
    for i in range(3):
        add(AS_OF, i, agent="tester", experiment_id="exp_small", variant="a", decision="rejected")
        add(AS_OF, i, agent="tester", experiment_id="exp_small", variant="b", decision="accepted")
    return records


def settle(records: list[dict], seed: int = 7) -> list[dict]:
    """Settlement rows of the accepted and edited records; edits of 'chatty' carry the planted phrases."""
    rng = random.Random(seed)
    rows = []
    for r in records:
        if r["decision"] not in ("accepted", "edited"):
            continue
        noise = " ".join(rng.sample(FILLER, 2))
        if r["decision"] == "accepted":
            deleted, added, output, final, retained = [], [], r["output"], r["output"], 1.0
        elif r["agent"] == "chatty":
            output = f"As an AI language model, I think {noise}! Really! Truly!"
            final = f"{noise.capitalize()}. Let me know if you need anything else."
            deleted = [f"As an AI language model, I think {noise.split()[0]}", "! Really! Truly!"]
            added = [f"{noise.split()[0].capitalize()}.", "Let me know if you need anything else."]
            retained = 0.4
        else:
            word = rng.choice(FILLER)
            output, final, deleted, added, retained = f"{noise} {word}", noise, [word], [], 0.8
        rows.append(
            {
                "log_id": r["log_id"],
                "timestamp": r["timestamp"],
                "task": r["task"],
                "decision": r["decision"],
                "agent": r["agent"],
                "output": output,
                "final_text": final,
                "retained": retained,
                "deleted_spans": deleted,
                "added_spans": added,
            }
        )
    return rows


def by_day(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by the day of their timestamp."""
    days = defaultdict(list)
    for row in rows:
        days[row["timestamp"].date().isoformat()].append(row)
    return days


def write_planted_lake(data_dir) -> list[dict]:
    """A data dir whose lake holds the planted raw logs and their settlements; returns the raw records."""
    records = planted_records()
    settings = Settings.from_env(data_dir=str(data_dir))
    for day, rows in by_day(records).items():
        write_raw_logs(settings.lake_dir, day, rows)
    for day, rows in by_day(settle(records)).items():
        write_parquet_atomic(
            pa.Table.from_pylist(rows, schema=SETTLED_SCHEMA), partition_file(settings.lake_dir, "settlements", day)
        )
    return records


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("planted")
    records = write_planted_lake(data_dir)
    settings = Settings.from_env(data_dir=str(data_dir))
    return records, build_report(settings)


def test_totals_and_as_of(planted):
    records, report = planted
    assert report["as_of"] == AS_OF.isoformat()
    reviewed = sum(r["decision"] != "pending" for r in records)
    assert report["totals"]["records"] == len(records)
    assert report["totals"]["reviewed"] == reviewed
    assert report["totals"]["settled"] == sum(r["decision"] in ("accepted", "edited") for r in records)


def test_group_rates_and_windows(planted):
    _, report = planted
    steady = report["groups"]["agent"]["steady"]
    slipping = report["groups"]["agent"]["slipping"]
    assert slipping["n"] == 300
    assert slipping["acceptance_rate"] == pytest.approx((230 * 0.8 + 70 * 0.3) / 300)
    assert slipping["windows"]["7d"]["n"] == 70
    assert slipping["windows"]["7d"]["acceptance_rate"] == pytest.approx(0.3)
    assert slipping["windows"]["30d"]["acceptance_rate"] == pytest.approx(slipping["acceptance_rate"])
    assert report["groups"]["agent"]["chatty"]["acceptance_rate"] == pytest.approx(0.2)
    assert steady["n"] == 300 and steady["windows"]["90d"]["n"] == 300  # pending records are not reviewed
    assert steady["mean_quality"] == pytest.approx(8.0)
    assert 300 <= steady["latency_ms_p50"] <= steady["latency_ms_p95"] <= 400
    assert report["groups"]["agent"]["chatty"]["mean_retained"] == pytest.approx((0.2 * 1.0 + 0.4 * 0.4) / 0.6)
    assert set(report["groups"]) >= {"task", "agent", "topic", "user_id", "experiment_id", "variant"}


def test_planted_regression_is_flagged_and_stable_agent_is_not(planted):
    _, report = planted
    flagged = {(r["dimension"], r["key"]) for r in report["regressions"]}
    assert ("agent", "slipping") in flagged
    assert ("agent", "steady") not in flagged and ("agent", "chatty") not in flagged
    reg = next(r for r in report["regressions"] if r["key"] == "slipping")
    assert (reg["before"], reg["after"], reg["n_before"], reg["n_after"]) == (pytest.approx(0.8), pytest.approx(0.3), 230, 70)
    assert reg["p_value"] < 0.05 and reg["metric"] == "acceptance_rate"


def test_planted_edit_phrases_are_recovered_as_longest_phrases(planted):
    _, report = planted
    chatty = report["edit_patterns"]["chatty"]
    assert chatty["edited"] == 30 * 4
    assert chatty["deleted"][0] == {"text": "as an ai language model i think", "count": 120, "rate": 1.0}
    assert chatty["added"][0] == {"text": "let me know if you need anything else", "count": 120, "rate": 1.0}
    deleted = [p["text"] for p in chatty["deleted"]]
    assert "language model" not in deleted and "ai language" not in deleted
    assert len(chatty["deleted"]) <= Settings().report_top_phrases
    tone = {t["marker"]: t for t in chatty["tone_shifts"]}
    assert tone["exclamations"]["mean_delta"] == pytest.approx(-3.0)
    assert tone["hedging"]["mean_delta"] == pytest.approx(-1.0)
    assert tone["words"]["mean_delta"] == pytest.approx(-1.0)


def test_experiment_with_real_difference_gets_a_winner_and_null_one_none(planted):
    _, report = planted
    real, null = report["experiments"]["exp_real"], report["experiments"]["exp_null"]
    assert real["winner"] == "b" and real["p_value"] < 0.05 and real["test"] == "chi2"
    assert real["arms"]["a"]["acceptance_rate"] == pytest.approx(0.3)
    assert real["difference"] == pytest.approx(0.4)
    assert real["ci95"][0] < 0.4 < real["ci95"][1]
    assert null["winner"] is None and null["p_value"] == pytest.approx(1.0)
    small = report["experiments"]["exp_small"]
    assert small["test"] == "fisher" and small["p_value"] == pytest.approx(0.1) and small["winner"] is None


def test_retries_and_failure_reasons(planted):
    _, report = planted
    retries = report["retries"]
    by_attempt = {a["attempt"]: a for a in retries["by_attempt"]}
    assert by_attempt[2]["acceptance_rate"] == pytest.approx(0.9) and by_attempt[2]["mean_quality"] == pytest.approx(8.5)
    assert retries["trend"]["helps"] and retries["trend"]["acceptance_slope"] > 0
    assert retries["by_task"]["chat"]["trend"]["helps"]
    slipping = report["failure_reasons"]["agent"]["slipping"]
    assert slipping == [{"reason": "too_formal", "count": 120, "rate": pytest.approx(0.4)}]
    assert report["failure_reasons"]["overall"][0]["count"] == 120


def test_recommendations_and_alerts_name_the_evidence(planted):
    _, report = planted
    texts = " ".join(r["text"] for r in report["recommendations"])
    assert "chatty: editors delete 'as an ai language model i think' in 100% of edits" in texts
    assert "slipping" in texts and "exp_real" in texts and "retries raise acceptance" in texts
    rejected = {a["key"] for a in report["alerts"]["rejection_rate"]}
    assert {"chatty", "slipping"} <= rejected and "steady" not in rejected
    assert report["alerts"]["latency_p95"] == [] and report["alerts"]["confidence_drop"] == []


def test_markdown_shows_every_section(planted):
    _, report = planted
    markdown = render_markdown(report)
    for heading in (
        "## Recommendations",
        "## Regressions",
        "## By agent",
        "## Edit patterns",
        "## Experiments",
        "## Retries",
        "## Failure reasons",
    ):
        assert heading in markdown
    assert "| slipping | 300 | 68.3% |" in markdown
    assert "exp_real: a 30.0% (n=300), b 70.0% (n=300)" in markdown


def test_markdown_lists_the_most_reviewed_groups_of_a_dimension_up_to_its_limit(planted):
    _, report = planted
    users = report["groups"]["user_id"]
    ranked = sorted(users, key=lambda key: (-users[key]["n"], key))
    section = render_markdown(report, max_groups=2).split("## By user_id")[1].split("\n## ")[0]
    assert section.startswith(f" (the 2 most reviewed of {len(users)})")
    rows = [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines() if line.startswith("| ")][1:]
    assert rows == ranked[:2]
    assert "most reviewed" not in render_markdown(report, max_groups=len(users)).split("## By user_id")[1].splitlines()[0]


def test_no_pii_in_report_or_markdown(planted, tmp_path):
    _, report = planted
    text = write_large_json_atomic(jsonable(report), tmp_path / "report.json").read_text() + render_markdown(report)
    assert EMAIL not in text and "example.com" not in text
    assert "[EMAIL]" in report["groups"]["user_id"]


def test_the_written_report_reads_back_as_the_report_built(tmp_path):
    write_planted_lake(tmp_path)
    report, _, path = publish_report(Settings.from_env(data_dir=str(tmp_path)))
    written = json.loads(path.read_text())
    assert len(written["groups"]["user_id"]) == len(report["groups"]["user_id"]) > 1
    assert written["groups"] == report["groups"] and written["totals"] == report["totals"]


def test_listed_groups_decode_their_entries_rank_the_most_reviewed_and_write_their_members(tmp_path):
    entries = {"a": {"n": 2, "rates": [0.5, None]}, "b": {"n": 5}, "c": {"n": 5}}
    members = pa.array([orjson.dumps({key: entry})[1:-1] + b"," for key, entry in entries.items()], pa.large_binary())
    # the members of a dimension as a slice of a table's: a chunk that starts past a member, an empty one, another
    before = pa.concat_arrays([pa.array([b'"x":{},'], pa.large_binary()), members[:2]])
    chunked = pa.chunked_array([before, members[:0], members[2:]]).slice(1)
    listed = patterns.ListedGroups(list(entries), chunked, np.array([2, 5, 5]))
    assert dict(listed) == entries and len(listed) == 3 and "d" not in listed
    assert listed.most_reviewed(2) == [("b", {"n": 5}), ("c", {"n": 5})]
    empty = patterns.ListedGroups([], chunked.slice(0, 0), np.array([], np.int64))
    path = write_large_json_atomic({"a": listed.json(), "b": empty.json()}, tmp_path / "groups.json")
    assert orjson.loads(path.read_bytes()) == {"a": entries, "b": {}}


def test_longest_phrases_folds_sub_phrases_into_the_supported_one():
    counts = {"as an ai": 10, "an ai": 10, "ai": 12, "as an ai model": 9, "the": 50, "thanks": 4}
    assert longest_phrases(counts) == [("as an ai model", 9), ("thanks", 4)]


def test_empty_lake_gives_an_empty_report(tmp_path):
    report = build_report(Settings.from_env(data_dir=str(tmp_path)))
    assert report["totals"]["records"] == 0 and report["as_of"] is None
    assert report["groups"] == {} and report["experiments"] == {} and report["regressions"] == []
    assert render_markdown(report).startswith("# Pattern report")


def test_a_report_waits_for_the_one_in_progress(tmp_path):
    # another report's fold rewrites the rollups this one reads
    settings = Settings.from_env(data_dir=str(tmp_path))
    order = []
    with hold(settings.root, "report"):
        thread = threading.Thread(target=lambda: order.append(build_report(settings)["as_of"]))
        thread.start()
        thread.join(0.3)
        order.append("first")
    thread.join()
    assert order == ["first", None]


def test_longest_phrases_leaves_out_incidental_extensions():
    counts = {"as an ai": 10, "as an ai sun": 3, "sun": 4}
    assert longest_phrases(counts) == [("as an ai", 10), ("sun", 4)]


def test_gsm8k_gives_the_true_per_model_acceptance_rates(tmp_path):
    settings = Settings.from_env(data_dir=str(tmp_path))
    for day, rows in by_day([raw_log(**record) for record in gsm8k_records()]).items():
        write_raw_logs(settings.lake_dir, day, rows)
    report = build_report(settings)
    rates = {agent: round(g["acceptance_rate"] * 100, 2) for agent, g in report["groups"]["agent"].items()}
    assert rates == {"6b_finetuning": 21.68, "6b_verification": 39.04, "175b_finetuning": 34.72, "175b_verification": 56.25}
    assert all(g["n"] == 1319 for g in report["groups"]["agent"].values())
    totals = report["totals"]
    assert (totals["records"], totals["reviewed"], totals["rejected"]) == (4 * 1319, 4 * 1319, 0)
    assert report["groups"]["task"]["math_qa"]["rejection_rate"] == 0.0


def test_a_regression_needs_enough_records_on_both_sides():
    settings = Settings.from_env(env={})
    tiny = {"dimension": "user_id", "key": "u1", "accepted_before": 5, "n_before": 5, "accepted_7d": 0, "n_7d": 5}
    large = {"dimension": "agent", "key": "a1", "accepted_before": 80, "n_before": 100, "accepted_7d": 10, "n_7d": 40}
    listed = pa.Table.from_pylist([tiny, large])
    assert [r["key"] for r in _regressions(listed, settings)] == ["a1"]


def test_a_phrase_longer_than_the_counted_ngrams_comes_back_whole():
    # A deleted ten-word phrase is counted only as its overlapping eight-word windows (and their sub-phrases).
    words = ["the", "air", "is", "thick", "with", "ancient", "mystery", "and", "untold", "secrets"]
    counts = {" ".join(words[i : i + n]): 30 for n in range(1, 9) for i in range(len(words) - n + 1)}
    counts["what do you do next"] = 12
    assert longest_phrases(counts) == [(" ".join(words), 30), ("what do you do next", 12)]


def _stitch_by_every_pair(phrases: dict[str, int]) -> dict[str, int]:
    """The definition of window stitching, trying every pair: what the indexed search must match."""
    phrases = dict(phrases)
    while True:
        pair = next(
            (
                (a, b)
                for a in phrases
                for b in phrases
                if a != b and _window_overlap(a, b) and min(phrases[a], phrases[b]) >= MERGE_SHARE * max(phrases[a], phrases[b])
            ),
            None,
        )
        if pair is None:
            return phrases
        a, b = pair
        count = min(phrases.pop(a), phrases.pop(b))
        phrases[a + " " + " ".join(b.split()[_window_overlap(a, b) :])] = count


def test_window_stitching_joins_the_same_pairs_as_trying_every_pair():
    rng = random.Random(3)
    for _ in range(300):
        words = [rng.choice("abcde") for _ in range(rng.randint(4, 14))]
        phrases = {}
        for _ in range(rng.randint(1, 25)):
            size = rng.randint(1, 8)
            start = rng.randrange(max(1, len(words) - size + 1))
            phrases[" ".join(words[start : start + size])] = rng.choice([5, 9, 10, 10, 11, 20])
        assert _stitch_windows(phrases) == _stitch_by_every_pair(phrases)
        assert list(_stitch_windows(phrases)) == list(_stitch_by_every_pair(phrases))


def test_groups_with_too_few_reviewed_records_are_counted_not_listed(tmp_path):
    rows = [raw_log(f"a{i}", user_id="regular", decision="accepted") for i in range(5)]
    rows += [raw_log(f"b{i}", user_id=f"passer-by-{i}", decision="rejected") for i in range(3)]
    rows += [raw_log(f"c{i}", user_id="lurker", decision=None) for i in range(9)]  # pending: nothing reviewed
    write_raw_logs(tmp_path / "lake", "2024-01-15", rows)
    report = build_report(Settings.from_env(data_dir=str(tmp_path), report_min_group_n=5))
    assert list(report["groups"]["user_id"]) == ["regular"]
    assert report["groups_omitted"] == {"user_id": 4}
    assert report["groups"]["task"]["chat"]["n"] == 8  # the omitted users' records still count in their task
    assert report["totals"]["reviewed"] == 8


def test_longest_phrases_of_a_long_history_consider_the_best_supported_only(monkeypatch):
    rng = random.Random(3)
    counts = {f"w{rng.randrange(10**6)} w{rng.randrange(10**6)}": rng.randint(3, 5) for _ in range(5000)}
    counts.update({"as an ai": 40, "an ai": 40, "ai": 45, "as an ai model": 38, "thanks": 30})
    capped = longest_phrases(counts)
    monkeypatch.setattr(patterns, "PHRASE_CANDIDATES", len(counts))
    assert capped[:10] == longest_phrases(counts)[:10]
    assert capped[:2] == [("as an ai model", 38), ("thanks", 30)]

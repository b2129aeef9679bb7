"""Tests of settling a raw_logs partition: filters, redaction, dedup, edit metrics, weights and the written file."""

import json

import pyarrow.parquet as pq
import pytest

from ft_pipeline.core.io import partition_file
from ft_pipeline.core.schema import RAW_LOG_SCHEMA
from ft_pipeline.core.settlements import EXCLUSION_REASONS, build_partition, quarantine_path, settlements_path, summary
from ft_pipeline.settings import Settings
from ft_pipeline_tests.lake_fixtures import DEFAULT_DATE, raw_log, write_raw_logs

from .test_redaction import PII


@pytest.fixture
def settings(tmp_path):
    """Default thresholds, data dir in the test's temporary folder."""
    return Settings.from_env(env={}, data_dir=str(tmp_path))


def settle(rows, settings):
    """Settle `rows` as the raw_logs partition of DEFAULT_DATE: the result and the written table."""
    write_raw_logs(settings.lake_dir, DEFAULT_DATE, rows)
    result = build_partition(settings, DEFAULT_DATE)
    return result, pq.read_table(settlements_path(settings, DEFAULT_DATE))


def settled_ids(rows, settings):
    """log_ids of the rows that settle."""
    return settle(rows, settings)[1]["log_id"].to_pylist()


def test_pii_of_every_type_never_reaches_the_written_partition(settings):
    values = [value for values in PII.values() for value in values]
    rows = []
    for i, value in enumerate(values):
        rows.append(
            raw_log(
                f"pii-{i}",
                prompt=f"Request {i}: please reach me at {value} today",
                system_prompt=f"Operator contact {value}.",
                messages=[{"role": "user", "content": f"earlier I said:\n{value}"}],
                decision="edited",
                output=f"Sure, I will use {value} as requested.",
                final_output=f"Sure, I will use {value} as you asked.",
                user_id=f"user {value}",
                metadata={"contact": value},
                extra={"note": f"from {value}"},
            )
        )
    write_raw_logs(settings.lake_dir, DEFAULT_DATE, rows)
    result = build_partition(settings, DEFAULT_DATE)
    assert result.settled == len(values)
    written = json.dumps(pq.read_table(settlements_path(settings, DEFAULT_DATE)).to_pylist(), default=str)
    leaked = [value for value in values if value in written]
    assert leaked == []
    # prompt, system_prompt, messages, output, final_output, user_id, metadata and extra: eight per value
    assert sum(result.pii.values()) == 8 * len(values)
    assert set(result.pii) == set(PII)
    assert "[EMAIL]" in written and "[CARD]" in written
    assert all(json.loads(m) for m in pq.read_table(settlements_path(settings, DEFAULT_DATE))["messages"].to_pylist())


def test_no_false_positives_in_settled_text(settings):
    prompt = "SELECT name FROM orders WHERE year = 2024 AND total > 19.99; card 1234 5678 9012 3456"
    output = "In 2024 the price was $1,234.56 on 2024-01-15 at 12:30."
    _, table = settle([raw_log("a", prompt=prompt, output=output)], settings)
    assert table["prompt"].to_pylist() == [prompt]
    assert table["final_text"].to_pylist() == [output]


def test_only_accepted_and_edited_records_settle_with_their_final_text(settings):
    rows = [
        raw_log("accepted", output="Answer one is right."),
        raw_log("accepted-equal-final", output="Answer two.", final_output=" Answer two. "),
        raw_log("accepted-other-final", output="Answer three.", final_output="Something else."),
        raw_log("edited", decision="edited", output="Answer four, roughly.", final_output="Answer four exactly."),
        raw_log("edited-no-final", decision="edited", output="Answer five."),
        raw_log("rejected", decision="rejected"),
        raw_log("pending", decision=None),
    ]
    result, table = settle(rows, settings)
    final = dict(zip(table["log_id"].to_pylist(), table["final_text"].to_pylist()))
    assert final == {
        "accepted": "Answer one is right.",
        "accepted-equal-final": "Answer two.",
        "edited": "Answer four exactly.",
    }
    assert result.excluded == {
        "accepted_final_differs": 1,
        "edited_without_final": 1,
        "not_settled:rejected": 1,
        "not_settled:pending": 1,
    }


def test_quality_filters_apply_only_to_present_fields(settings):
    rows = [
        raw_log("no-scores"),
        raw_log("good", quality_score=7.0, confidence=0.7, user_rating=4.0),
        raw_log("low-quality", quality_score=6.9),
        raw_log("low-confidence", confidence=0.5),
        raw_log("low-rating", user_rating=3.0),
        raw_log("short", output="k"),
        raw_log("several", quality_score=1.0, confidence=0.1),
    ]
    result, table = settle(rows, settings)
    assert sorted(table["log_id"].to_pylist()) == ["good", "no-scores"]
    assert result.excluded == {
        "low_quality_score": 2,
        "low_confidence": 1,
        "low_user_rating": 1,
        "final_too_short": 1,
    }


def test_filters_switched_off_with_none(settings):
    rows = [
        raw_log("q", quality_score=1.0),
        raw_log("c", confidence=0.0),
        raw_log("r", user_rating=1.0),
        raw_log("s", output="k"),
    ]
    off = settings.replace(min_quality_score=None, min_confidence=None, min_user_rating=None, min_final_chars=None)
    assert sorted(settled_ids(rows, off)) == ["c", "q", "r", "s"]


def test_weights_follow_quality(settings):
    scores = {"none": None, "q7": 7.0, "q7.9": 7.9, "q8": 8.0, "q9": 9.0, "q10": 10.0}
    rows = [raw_log(name, quality_score=score) for name, score in scores.items()]
    _, table = settle(rows, settings)
    weights = dict(zip(table["log_id"].to_pylist(), table["weight"].to_pylist()))
    assert weights == {"none": 1.0, "q7": 1.0, "q7.9": 1.0, "q8": 1.5, "q9": 2.0, "q10": 2.0}


def test_near_duplicates_keep_best_quality_then_newest(settings):
    prompt, final = "How do I reset my password?", "Open settings and choose reset."
    rows = [
        raw_log("old-q9", prompt=prompt, output=final, quality_score=9.0, timestamp="2024-01-15T08:00:00+00:00"),
        raw_log(
            "new-q9",
            prompt="  how do I RESET my\tpassword? ",
            output=final.upper(),
            quality_score=9.0,
            timestamp="2024-01-15T09:00:00+00:00",
        ),
        raw_log("newest-q8", prompt=prompt, output=final, quality_score=8.0, timestamp="2024-01-15T10:00:00+00:00"),
        raw_log("unscored", prompt=prompt, output=final, timestamp="2024-01-15T11:00:00+00:00"),
        raw_log("other-task", task="support", prompt=prompt, output=final, quality_score=7.0),
        raw_log("other-final", prompt=prompt, output="Ask an administrator.", quality_score=7.0),
    ]
    result, table = settle(rows, settings)
    assert sorted(table["log_id"].to_pylist()) == ["new-q9", "other-final", "other-task"]
    assert result.excluded == {"near_duplicate": 3}


def test_edit_metrics_of_settled_records(settings):
    rows = [
        raw_log(
            "edited",
            decision="edited",
            output="As an AI language model, I can say the meeting is at noon.",
            final_output="The meeting is at noon.",
        ),
        raw_log("accepted"),
    ]
    _, table = settle(rows, settings)
    by_id = {row["log_id"]: row for row in table.to_pylist()}
    edited, accepted = by_id["edited"], by_id["accepted"]
    assert "As an AI language model," in edited["deleted_spans"][0]
    assert edited["added_spans"] == ["The"]
    assert 0 < edited["retained"] < 1 and edited["edit_distance"] > 0
    assert (accepted["retained"], accepted["edit_distance"], accepted["deleted_spans"], accepted["added_spans"]) == (
        1.0,
        0,
        [],
        [],
    )


def test_rerun_gives_identical_rows(settings):
    rows = [
        raw_log(
            f"r{i}",
            decision="edited" if i % 2 else "accepted",
            final_output=f"Final answer {i}." if i % 2 else None,
            quality_score=7 + i % 3,
        )
        for i in range(12)
    ]
    _, first = settle(rows, settings)
    first_bytes = settlements_path(settings, DEFAULT_DATE).read_bytes()
    build_partition(settings, DEFAULT_DATE)
    assert settlements_path(settings, DEFAULT_DATE).read_bytes() == first_bytes
    # the same records in another order settle to the same rows
    _, again = settle(list(reversed(rows)), settings)
    assert again.equals(first)
    assert again.num_rows == 12


def test_small_batches_settle_like_one_batch(settings, monkeypatch):
    # duplicates and the time order span batch boundaries; PII sits in several batches
    rows = [
        raw_log(
            f"b{i:02d}",
            prompt=f"Question {i % 7}: mail x{i}@example.com",
            decision="edited" if i % 3 else "accepted",
            final_output=f"Answer {i % 7}, edited." if i % 3 else None,
            quality_score=7.0 + i % 4,
            timestamp=f"{DEFAULT_DATE}T{23 - i % 24:02d}:00:00+00:00",
        )
        for i in range(40)
    ]
    one_result, one = settle(rows, settings)
    monkeypatch.setattr("ft_pipeline.core.settlements.BATCH_ROWS", 3)
    many_result, many = settle(rows, settings)
    assert many.equals(one)
    assert pq.ParquetFile(settlements_path(settings, DEFAULT_DATE)).num_row_groups > 1
    assert summary([many_result]) == summary([one_result])
    assert one_result.excluded["near_duplicate"] > 0 and one_result.pii["EMAIL"] == one_result.settled
    assert many_result.preview.equals(many.slice(0, 5))
    assert many["timestamp"].to_pylist() == sorted(many["timestamp"].to_pylist())


def test_partition_without_settlements_still_gets_a_file(settings):
    write_raw_logs(settings.lake_dir, DEFAULT_DATE, [raw_log("x", decision="rejected")])
    result = build_partition(settings, DEFAULT_DATE)
    written = pq.read_table(settlements_path(settings, DEFAULT_DATE))
    assert written.num_rows == 0 and result.settled == 0
    assert written.schema.names[: len(RAW_LOG_SCHEMA)] == RAW_LOG_SCHEMA.names
    assert written.schema.names[len(RAW_LOG_SCHEMA) :] == [
        "final_text",
        "retained",
        "edit_distance",
        "deleted_spans",
        "added_spans",
        "weight",
    ]
    assert summary([result])["mean_retained"] is None


def test_day_without_raw_file_settles_to_an_empty_partition(settings):
    result = build_partition(settings, DEFAULT_DATE)
    assert result.source_missing and result.rows_in == 0
    assert pq.read_table(settlements_path(settings, DEFAULT_DATE)).num_rows == 0


def test_a_day_whose_raw_file_expired_keeps_its_settlements(settings):
    settle([raw_log("a")], settings)
    partition_file(settings.lake_dir, "raw_logs", DEFAULT_DATE).unlink()
    assert build_partition(settings, DEFAULT_DATE).source_missing
    assert pq.read_table(settlements_path(settings, DEFAULT_DATE))["log_id"].to_pylist() == ["a"]


def test_a_build_leaves_no_temporary_file_and_removes_a_killed_builds(settings):
    target = settlements_path(settings, DEFAULT_DATE)
    target.parent.mkdir(parents=True)
    left = target.with_name(f".{target.name}.killed.tmp")  # what a build killed while writing leaves beside the file
    left.write_bytes(b"PAR1")
    (settings.root / ".scratch").mkdir()
    (settings.root / ".scratch" / "settlements-dead").mkdir()  # a dead build's spill folder, its lock file free
    (settings.root / ".scratch" / "settlements-dead.lock").touch()
    settle([raw_log("a")], settings)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert list((settings.root / ".scratch").iterdir()) == []
    assert not list(settings.lake_dir.glob(".*"))


def test_summary_names_every_reason_and_adds_partitions(settings):
    one, _ = settle([raw_log("a"), raw_log("b", decision="rejected")], settings)
    two, _ = settle([raw_log("c", decision="edited", output="one two", final_output="one three")], settings)
    totals = summary([one, two])
    assert {f"excluded:{reason}" for reason in EXCLUSION_REASONS} <= set(totals)
    assert totals["rows_in"] == 3 and totals["settled"] == 2 and totals["excluded"] == 1
    assert totals["excluded:not_settled:rejected"] == 1 and totals["pii:EMAIL"] == 0
    assert totals["mean_retained"] == pytest.approx((1.0 + 0.5) / 2)
    assert totals["edit_rate"] == 0.5


def test_every_text_column_leaves_raw_redacted(settings):
    """Names a producer chose (agent, topic, experiment, variant, model, failure reasons, ...) are redacted like prompts."""
    value = "carol@example.com"
    texts = {name: f"x {value}" for name in ("agent", "topic", "reasoning_mode", "model", "adapter_version")}
    texts |= {"experiment_id": "exp-sk-abcdef123456", "variant": "v-AKIAIOSFODNN7EXAMPLE"}
    row = raw_log("r1", failure_reasons=["too_formal", "ssn 078-05-1120"], source_file=f"{value}.jsonl", **texts)
    result, table = settle([row], settings)
    written = json.dumps(table.to_pylist(), default=str)
    assert result.settled == 1
    assert not [leak for leak in (value, "sk-abcdef123456", "AKIAIOSFODNN7EXAMPLE", "078-05-1120") if leak in written]
    assert table["failure_reasons"].to_pylist() == [["too_formal", "ssn [SSN]"]]


def test_an_identifier_holding_pii_is_excluded_and_quarantined_by_the_stage(settings):
    rows = [raw_log("dave@example.com"), raw_log("ok-1"), raw_log("ok-2", task="sk-live-abcdef123456")]
    rows += [raw_log("3f786850e387550fdab836ed7e6dc881"), raw_log("4111111111111111")]  # random-looking ids are ids
    result, table = settle(rows, settings)
    assert sorted(table["log_id"].to_pylist()) == ["3f786850e387550fdab836ed7e6dc881", "4111111111111111", "ok-1"]
    assert result.excluded == {"pii_in_identifier": 2}
    entries = [json.loads(line) for line in quarantine_path(settings, DEFAULT_DATE).read_text().splitlines()]
    assert [e["reason"] for e in entries] == ["pii_in_identifier"] * 2
    assert "dave@example.com" not in json.dumps(entries)


def test_a_record_that_fails_is_quarantined_and_its_day_settles(settings, monkeypatch):
    from ft_pipeline.core import settlements as module

    real = module.edit_metrics

    def fragile(a, b):
        if "poison" in b:
            raise RecursionError("too deep for this record")
        return real(a, b)

    monkeypatch.setattr(module, "edit_metrics", fragile)
    rows = [raw_log(f"ok-{i}", decision="edited", final_output=f"fixed {i}") for i in range(5)]
    rows.append(raw_log("bad", decision="edited", final_output="poison"))
    # a lake written before ingest had depth limits may hold one nested 5,000 deep
    rows.append(raw_log("deep", metadata='{"a": ' * 5000 + '"mail bob@example.com"' + "}" * 5000))
    result, table = settle(rows, settings)
    assert sorted(table["log_id"].to_pylist()) == ["deep", "ok-0", "ok-1", "ok-2", "ok-3", "ok-4"]
    entries = [json.loads(line) for line in quarantine_path(settings, DEFAULT_DATE).read_text().splitlines()]
    assert entries == [{"log_id": "bad", "reason": "settle_failed:RecursionError", "detail": "settling this record failed"}]
    assert summary([result])["quarantined"] == 1 and "bob@example.com" not in json.dumps(table.to_pylist(), default=str)

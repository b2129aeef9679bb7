"""Tests of the incremental pattern report: per-day aggregates combined give the full recomputation's report."""

import gzip
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ft_pipeline.core import aggregates, patterns
from ft_pipeline.core.demo import write_demo_inbox
from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import partition_dates, partition_file, write_parquet_atomic
from ft_pipeline.core.patterns import build_report
from ft_pipeline.core.settlements import build_partition
from ft_pipeline.settings import Settings
from ft_pipeline_tests.core.test_patterns import SETTLED_SCHEMA, write_planted_lake
from ft_pipeline_tests.gsm8k import gsm8k_records
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs
from ft_pipeline_tests.pattern_oracle import full_report


def differences(full, incremental, path: str = "") -> list[str]:
    """Where two reports differ: structure and exact values, floats to 1e-9 (NaN equals NaN)."""
    if isinstance(full, Mapping) and isinstance(incremental, Mapping):
        if full.keys() != incremental.keys():
            return [f"{path}: keys {sorted(set(full) ^ set(incremental))}"]
        return [d for key in full for d in differences(full[key], incremental[key], f"{path}.{key}")]
    if isinstance(full, list) and isinstance(incremental, list):
        if len(full) != len(incremental):
            return [f"{path}: {len(full)} items != {len(incremental)}"]
        return [d for i, (a, b) in enumerate(zip(full, incremental)) for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(full, float) and isinstance(incremental, float):
        same = (math.isnan(full) and math.isnan(incremental)) or math.isclose(full, incremental, rel_tol=1e-9, abs_tol=1e-12)
        return [] if same else [f"{path}: {full!r} != {incremental!r}"]
    return [] if (type(full), full) == (type(incremental), incremental) else [f"{path}: {full!r} != {incremental!r}"]


def assert_equals_full_recomputation(settings: Settings) -> dict:
    """The incremental report, checked against the full recomputation over the lake."""
    full, incremental = full_report(settings), build_report(settings)
    full.pop("generated_at"), incremental.pop("generated_at")
    assert differences(full, incremental) == []
    return incremental


def ingested(settings: Settings) -> Settings:
    """`settings` after ingesting its inbox and settling every day, as the pipeline does."""
    ingest(settings, last_day="2024-03-31")
    for day in partition_dates(settings.lake_dir, "raw_logs"):
        build_partition(settings, day)
    return settings


def test_planted_patterns_report_equals_the_full_recomputation(tmp_path, monkeypatch):
    write_planted_lake(tmp_path)
    report = assert_equals_full_recomputation(Settings.from_env(data_dir=str(tmp_path)))
    assert report["regressions"] and report["edit_patterns"] and report["experiments"]
    # few phrase candidates, so the cut falls among the planted phrases' many equal counts
    monkeypatch.setattr(patterns, "PHRASE_CANDIDATES", 3)
    report = assert_equals_full_recomputation(Settings.from_env(data_dir=str(tmp_path)))
    assert any(p["deleted"] or p["added"] for p in report["edit_patterns"].values())


def test_demo_report_equals_the_full_recomputation(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    write_demo_inbox(settings.inbox_dir, records=1500, days=30, end=datetime(2024, 3, 31, tzinfo=UTC))
    report = assert_equals_full_recomputation(ingested(settings))
    assert report["totals"]["records"] == 1500 and report["failure_reasons"]["overall"]


def test_gsm8k_report_equals_the_full_recomputation(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    settings.inbox_dir.mkdir(parents=True)
    with gzip.open(settings.inbox_dir / "gsm8k.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in gsm8k_records())
    report = assert_equals_full_recomputation(ingested(settings))
    assert report["edit_patterns"] and report["groups"]["agent"]["6b_finetuning"]["n"] == 1319


def write_days(lake, first: date, days: int) -> None:
    """Raw logs of `days` days from `first`: a few agents, integer latencies with many ties, some retries; the edited
    ones settled with phrases that recur across days, some deleted and added alike."""
    for offset in range(days):
        day = first + timedelta(days=offset)
        rows = [
            raw_log(
                f"{day.isoformat()}-{i}",
                timestamp=f"{day.isoformat()}T12:00:00+00:00",
                agent=f"a{i % 3}",
                decision=("accepted", "edited", "rejected")[(i + offset) % 3],
                attempt=1 + i % 2,
                quality_score=float((i * 7) % 10),
                latency_ms=float((i * 37 + offset) % 11 * 100),
            )
            for i in range(3 + offset % 5)
        ]
        write_raw_logs(lake, day.isoformat(), rows)
        settled = [
            {
                **{name: row[name] for name in ("log_id", "timestamp", "task", "decision", "agent", "output")},
                "final_text": "Boil it.",
                "retained": 0.5,
                "deleted_spans": [f"as an ai model {offset % 4}", f"step {offset % 2}"],
                "added_spans": [f"kindly note {(offset + i) % 3}", f"step {offset % 2}"],
            }
            for i, row in enumerate(rows)
            if row["decision"] == "edited"
        ]
        write_parquet_atomic(
            pa.Table.from_pylist(settled, schema=SETTLED_SCHEMA), partition_file(lake, "settlements", day.isoformat())
        )


def test_integer_latencies_with_ties_give_the_exact_percentiles(tmp_path):
    write_days(Settings(data_dir=str(tmp_path)).lake_dir, date(2024, 1, 1), 9)
    report = assert_equals_full_recomputation(Settings(data_dir=str(tmp_path)))
    assert report["groups"]["agent"]["a1"]["windows"]["7d"]["latency_ms_p95"] is not None


def test_undated_records_count_in_the_whole_history_only(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    # an agent accepting all before the last 7 days and half in them: a regression, unless the many rejected undated
    # records (no timestamp) were taken for days before the last 7
    days = [(date(2024, 3, 31) - timedelta(days=back), back) for back in range(20)]
    for day, back in days:
        decisions = ["accepted", "rejected"] if back < 7 else ["accepted", "accepted"]
        rows = [
            raw_log(f"{day}-{i}", timestamp=f"{day.isoformat()}T12:00:00+00:00", agent="a", decision=decision)
            for i, decision in enumerate(decisions * 4)
        ]
        if back == 10:
            rows += [raw_log(f"undated-{i}", timestamp=None, agent="a", decision="rejected") for i in range(200)]
        write_raw_logs(settings.lake_dir, day.isoformat(), rows)
    report = assert_equals_full_recomputation(settings)
    agent = report["groups"]["agent"]["a"]
    assert agent["n"] == 20 * 8 + 200 and agent["windows"]["90d"]["n"] == 20 * 8
    found = sorted((r["dimension"], r["key"], r["before"], r["n_before"]) for r in report["regressions"])
    assert found == [("agent", "a", 1.0, 13 * 8), ("task", "chat", 1.0, 13 * 8)]


def held_days(settings: Settings, name: str) -> list[str]:
    """The days a rollup holds, from its footer."""
    held = json.loads(pq.read_schema(aggregates.rollup_path(settings.lake_dir, name)).metadata[aggregates.ROLLUP_META])
    return sorted(held["days"])


def assert_phrases_hold_the_rollups_days(settings: Settings, read: tuple[str, ...] = aggregates.ROLLUPS) -> None:
    """The phrase totals hold exactly the days of the rollups a report reads, of those `read` (and are absent without
    any)."""
    rollups = [name for name in read if aggregates.rollup_path(settings.lake_dir, name).exists()]
    if not rollups:
        assert not aggregates.rollup_path(settings.lake_dir, aggregates.PHRASES).exists()
        return
    assert held_days(settings, aggregates.PHRASES) == sorted(d for name in rollups for d in held_days(settings, name))


def stamps(settings: Settings) -> dict[str, int]:
    """When each rollup was last written."""
    return {name: aggregates.rollup_path(settings.lake_dir, name).stat().st_mtime_ns for name in aggregates.ROLLUPS}


def test_days_are_folded_into_the_rollups_once_enough_are_new_and_a_rewritten_or_removed_day_refolds_its_rollup(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(aggregates, "FOLD_DAYS", 5)  # fewer days for the same steps
    settings = Settings(data_dir=str(tmp_path))
    first = date(2024, 1, 1)
    dates = [(first + timedelta(days=d)).isoformat() for d in range(aggregates.HORIZON_DAYS + aggregates.FOLD_DAYS + 1)]
    # FOLD_DAYS - 1 days are read from their own files
    write_days(settings.lake_dir, first, aggregates.FOLD_DAYS - 1)
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    assert not aggregates.rollup_path(settings.lake_dir, "recent").exists()
    # FOLD_DAYS new days are folded into the recent rollup: all of them lie in the longest window; an earlier
    # version's single rollup goes
    earlier = aggregates.rollup_path(settings.lake_dir, "part")
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_bytes(b"PAR1")
    write_days(settings.lake_dir, first + timedelta(days=aggregates.FOLD_DAYS - 1), 1)
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    assert held_days(settings, "recent") == dates[: aggregates.FOLD_DAYS]
    assert not aggregates.rollup_path(settings.lake_dir, "old").exists() and not earlier.exists()
    # the next day is read from its file, the rollup as it is
    before = aggregates.rollup_path(settings.lake_dir, "recent").stat().st_mtime_ns
    write_days(settings.lake_dir, first + timedelta(days=aggregates.FOLD_DAYS), 1)
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    assert aggregates.rollup_path(settings.lake_dir, "recent").stat().st_mtime_ns == before
    # the days to the end of the longest window and past it: the days before the window go to the old rollup, as one day
    write_days(settings.lake_dir, first + timedelta(days=aggregates.FOLD_DAYS + 1), aggregates.HORIZON_DAYS)
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    cut = aggregates.FOLD_DAYS  # the newest day is HORIZON_DAYS after this one
    assert (held_days(settings, "old"), held_days(settings, "recent")) == (dates[: cut + 1], dates[cut + 1 :])
    # a crash between the two rollups' writes (the old one not written yet): the same report, and the next fold writes
    # the old one
    aggregates.rollup_path(settings.lake_dir, "old").unlink()
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    assert held_days(settings, "old") == dates[: cut + 1]
    # a crash before the phrase totals were written: the same report, and it writes them
    aggregates.rollup_path(settings.lake_dir, aggregates.PHRASES).unlink()
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    old = pq.read_table(aggregates.rollup_path(settings.lake_dir, "old")).to_pylist()
    recent = pq.read_table(aggregates.rollup_path(settings.lake_dir, "recent")).to_pylist()
    assert {r["day"].isoformat() for r in old if r["section"] == "groups"} == {dates[cut]}
    assert {r["day"].isoformat() for r in recent if r["section"] == "groups"} == set(dates[cut + 1 :])
    # late feedback on a recent day: only the recent rollup is folded again, from the window's files
    written = stamps(settings)
    late = dates[-3]
    write_raw_logs(settings.lake_dir, late, [raw_log("late", timestamp=f"{late}T08:00:00+00:00", agent="a9")])
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    assert stamps(settings)["old"] == written["old"] and stamps(settings)["recent"] != written["recent"]
    # a rewritten old day before a fold is due: the old rollup is not read, its days' files are
    fold_days = aggregates.FOLD_DAYS
    monkeypatch.setattr(aggregates, "FOLD_DAYS", len(dates))
    early = dates[2]
    write_raw_logs(settings.lake_dir, early, [raw_log("early", timestamp=f"{early}T08:00:00+00:00", agent="a9")])
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings, ("recent",))
    monkeypatch.setattr(aggregates, "FOLD_DAYS", fold_days)
    # a rewritten old day: the old rollup is folded again too
    written = stamps(settings)
    late = dates[3]
    write_raw_logs(settings.lake_dir, late, [raw_log("late", timestamp=f"{late}T08:00:00+00:00", agent="a9")])
    assert_equals_full_recomputation(settings)
    assert_phrases_hold_the_rollups_days(settings)
    assert all(stamps(settings)[name] != written[name] for name in aggregates.ROLLUPS)
    assert (held_days(settings, "old"), held_days(settings, "recent")) == (dates[: cut + 1], dates[cut + 1 :])
    # the newest days deleted: the old rollup's days now reach into the 90-day window, so it is folded again
    for day in dates[-(aggregates.FOLD_DAYS - 1) :]:
        for table in ("raw_logs", aggregates.TABLE):
            partition_file(settings.lake_dir, table, day).unlink()
    assert_equals_full_recomputation(settings)


def write_user_day(settings: Settings, offset: int, user: str) -> None:
    """Day `offset` after 2024-01-01: six reviewed records of `user`, with latencies, all by one agent."""
    day = (date(2024, 1, 1) + timedelta(days=offset)).isoformat()
    rows = [
        raw_log(
            f"{day}-{i}",
            timestamp=f"{day}T12:00:00+00:00",
            agent="a",
            user_id=user,
            decision=("accepted", "edited", "rejected")[(i + offset) % 3],
            latency_ms=float(100 + offset * 10 + i),
        )
        for i in range(6)
    ]
    write_raw_logs(settings.lake_dir, day, rows)


def computed_users(monkeypatch) -> list[list[str]]:
    """The users whose columns each later report computes, one list per report."""
    reports: list[list[str]] = []
    compute = patterns._computed

    def spied(con, table, groups):
        reports.append(sorted(k for (k,) in con.execute(f"SELECT key FROM {table} WHERE dimension = 'user_id'").fetchall()))
        return compute(con, table, groups)

    monkeypatch.setattr(patterns, "_computed", spied)
    return reports


def test_a_report_computes_only_the_groups_whose_rows_changed_or_moved_band_and_takes_the_others_from_the_last(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(aggregates, "FOLD_DAYS", 1000)  # every day read from its file: the rollups stay as they are
    settings = Settings(data_dir=str(tmp_path))
    for offset in range(40):  # one user a day, each listed (six reviewed records)
        write_user_day(settings, offset, f"u{offset}")
    reports = computed_users(monkeypatch)
    assert_equals_full_recomputation(settings)
    assert len(reports[-1]) == 40  # no last report: every group
    assert_equals_full_recomputation(settings)
    assert reports[-1] == []  # nothing changed
    # a new day: its user, and those whose day left the 7-day and the 30-day window (days 33 and 10)
    write_user_day(settings, 40, "u40")
    assert_equals_full_recomputation(settings)
    assert reports[-1] == ["u10", "u33", "u40"]
    # a rewritten day whose records went to another user: that user is computed, and the one who lost them (fewer
    # records, none reviewed) is no longer listed
    write_user_day(settings, 20, "u20b")
    report = assert_equals_full_recomputation(settings)
    assert reports[-1] == ["u20b"] and "u20" not in report["groups"]["user_id"]
    # a removed day: its user goes, nothing is computed for the others
    for table in ("raw_logs", aggregates.TABLE):
        partition_file(settings.lake_dir, table, "2024-01-06").unlink()
    report = assert_equals_full_recomputation(settings)
    assert reports[-1] == [] and "u5" not in report["groups"]["user_id"]
    # the newest day removed: the newest day moves back, and the days that move band again are computed
    for table in ("raw_logs", aggregates.TABLE):
        partition_file(settings.lake_dir, table, "2024-02-10").unlink()
    assert_equals_full_recomputation(settings)
    assert reports[-1] == ["u10", "u33"]
    # an unreadable last report's groups, or one listed by another minimum: every group again
    path = aggregates.rollup_dir(settings.lake_dir) / patterns.GROUPS_FILE
    path.write_bytes(b"ARROW1 torn")
    assert_equals_full_recomputation(settings)
    assert len(reports[-1]) == 39
    monkeypatch.setenv("FT_REPORT_MIN_GROUP_N", "6")
    assert_equals_full_recomputation(Settings.from_env(data_dir=str(tmp_path)))
    assert len(reports[-1]) == 39


def member_files(settings: Settings) -> list[int]:
    """The rows of the last report's member files in the order it lists them, checking that no other is beside them."""
    directory = aggregates.rollup_dir(settings.lake_dir)
    names = json.loads(pa.ipc.open_file((directory / patterns.GROUPS_FILE).read_bytes()).schema.metadata[patterns.GROUPS_META])[
        "members"
    ]
    assert sorted(path.name for path in [*directory.glob("members-*"), *directory.glob(".members-*")]) == sorted(names)
    return [pa.ipc.open_file((directory / name).read_bytes()).read_all().num_rows for name in names]


def test_a_report_writes_the_members_it_computed_and_all_in_one_file_again_only_past_the_slack(tmp_path, monkeypatch):
    monkeypatch.setattr(aggregates, "FOLD_DAYS", 1000)
    settings = Settings(data_dir=str(tmp_path))
    for offset in range(40):
        write_user_day(settings, offset, f"u{offset}")
    reports = computed_users(monkeypatch)
    report = assert_equals_full_recomputation(settings)
    listed = sum(map(len, report["groups"].values()))
    assert member_files(settings) == [listed]
    # each new day adds a file of the members it computed, until the files hold more than the slack allows
    offset, sizes = 40, []
    while not sizes or len(sizes[-1]) > 1:
        write_user_day(settings, offset, f"u{offset}")
        report = assert_equals_full_recomputation(settings)
        listed = sum(map(len, report["groups"].values()))
        sizes.append(member_files(settings))
        assert sum(sizes[-1]) <= patterns.MEMBERS_SLACK * listed and offset < 80
        offset += 1
    assert len(sizes) > 2 and sizes[1][:-1] == sizes[0] and sum(sizes[0][1:]) < listed and sizes[-1] == [listed]
    # a killed report's member files, written and not listed, go with the next report; an unchanged lake writes none
    directory = aggregates.rollup_dir(settings.lake_dir)
    (directory / f"members-{'0' * 32}.arrow").write_bytes(b"ARROW1 torn")
    (directory / f".members-{'0' * 32}.arrow.x1.tmp").write_bytes(b"ARROW1 torn")
    assert_equals_full_recomputation(settings)
    assert reports[-1] == [] and member_files(settings) == [listed]
    # a listed member file missing or unreadable, or a listed name that is no member file's: every group again
    groups = directory / patterns.GROUPS_FILE
    table = pa.ipc.open_file(groups.read_bytes()).read_all()
    state = json.loads(table.schema.metadata[patterns.GROUPS_META])
    # (one that a path would reach, outside the folder)
    (directory.parent / state["members"][0]).write_bytes((directory / state["members"][0]).read_bytes())
    for names in (["../" + state["members"][0]], [f"members-{'1' * 32}.arrow"]):
        listing = table.replace_schema_metadata({patterns.GROUPS_META: json.dumps({**state, "members": names})})
        with pa.OSFile(str(groups), "wb") as sink, pa.ipc.new_file(sink, listing.schema) as writer:
            writer.write_table(listing)
        assert_equals_full_recomputation(settings)
        assert len(reports[-1]) == offset
    next(directory.glob("members-*.arrow")).write_bytes(b"ARROW1 torn")
    assert_equals_full_recomputation(settings)
    assert len(reports[-1]) == offset and member_files(settings) == [listed]


def test_latency_of_a_large_group_in_the_rollup_is_kept_within_its_relative_accuracy(tmp_path, monkeypatch):
    # a group is large past fewer distinct values than a product's, so the test needs few records
    monkeypatch.setattr(aggregates, "LATENCY_EXACT_VALUES", 256)
    settings = Settings(data_dir=str(tmp_path))
    first = date(2024, 1, 1)
    days = aggregates.HORIZON_DAYS + aggregates.FOLD_DAYS + 1
    per_day = aggregates.LATENCY_EXACT_VALUES // aggregates.FOLD_DAYS + 10  # past the exact values in the folded days
    for offset in range(days):
        day = (first + timedelta(days=offset)).isoformat()
        rows = [
            # distinct latencies, old and new days alike spread over 100 to 1100 ms
            raw_log(
                f"{day}-{i}",
                timestamp=f"{day}T12:00:00+00:00",
                agent="big",
                latency_ms=100 + (offset * per_day + i) * 7919 % 100003 / 100,
            )
            for i in range(per_day)
        ]
        write_raw_logs(settings.lake_dir, day, rows)
    full, incremental = full_report(settings), build_report(settings)
    assert held_days(settings, "old")
    off = differences(full["groups"], incremental["groups"])
    # only the percentiles of the whole history take the buckets: every window lies after the folded days
    assert off and all(".latency_ms_p" in d and "windows" not in d for d in off), off
    for dimension, groups in full["groups"].items():
        for key, group in groups.items():
            for name in ("latency_ms_p50", "latency_ms_p95"):
                exact, approx = group[name], incremental["groups"][dimension][key][name]
                assert approx == pytest.approx(exact, rel=2 * aggregates.LATENCY_ACCURACY)


def test_a_new_day_aggregates_that_day_only_and_a_rewritten_day_again(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    write_planted_lake(tmp_path)
    dates, written = aggregates.refresh(settings.lake_dir)
    assert [d.date for d in written] == dates
    assert aggregates.refresh(settings.lake_dir)[1] == []

    assert_equals_full_recomputation(settings)

    write_raw_logs(settings.lake_dir, "2024-07-01", [raw_log("new-1", timestamp="2024-07-01T09:00:00+00:00", agent="steady")])
    assert [d.date for d in aggregates.refresh(settings.lake_dir)[1]] == ["2024-07-01"]
    # a day whose lake file changed after its aggregates were built is aggregated again
    raw = partition_file(settings.lake_dir, "raw_logs", "2024-06-15")
    built = aggregates.aggregates_path(settings.lake_dir, "2024-06-15").stat().st_mtime_ns
    os.utime(raw, ns=(built + 10**9, built + 10**9))
    assert [d.date for d in aggregates.refresh(settings.lake_dir)[1]] == ["2024-06-15"]
    # the rollup held the day's old aggregates: it is added up again
    report = assert_equals_full_recomputation(settings)
    assert report["as_of"] == "2024-07-01"


def test_a_day_without_data_writes_a_valid_empty_partition_and_reruns_are_idempotent(tmp_path):
    lake = Settings(data_dir=str(tmp_path)).lake_dir
    empty = aggregates.write_day(lake, "2024-02-01")
    assert (empty.records, empty.settled) == (0, 0)
    table = pq.read_table(empty.path)
    assert table.schema == aggregates.SCHEMA and table.num_rows == sum(empty.rows.values()) == 1  # the settled count, 0
    write_raw_logs(lake, "2024-02-02", [raw_log(f"r{i}", timestamp="2024-02-02T08:00:00+00:00") for i in range(3)])
    first = pq.read_table(aggregates.write_day(lake, "2024-02-02").path)
    again = aggregates.write_day(lake, "2024-02-02")
    assert (
        pq.read_table(again.path)
        .sort_by([(c, "ascending") for c in ("section", "dimension", "key", "item")])
        .equals(first.sort_by([(c, "ascending") for c in ("section", "dimension", "key", "item")]))
    )
    assert again.records == 3 and partition_dates(lake, "daily_aggregates") == ["2024-02-01", "2024-02-02"]
    assert not list(aggregates.aggregates_path(lake, "2024-02-02").parent.glob(".*"))


def test_a_bad_partition_date_is_refused(tmp_path):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        aggregates.write_day(tmp_path, "../2024-01-01")

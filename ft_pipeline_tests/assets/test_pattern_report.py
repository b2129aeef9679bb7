"""Tests of the pattern_report asset: materialized over prepared lake files, with its bundled checks."""

import json
from datetime import UTC, date, datetime, timedelta

from dagster import AssetCheckSeverity, AssetKey, materialize

from ft_pipeline.assets.pattern_report import pattern_report
from ft_pipeline.core.io import partition_dates
from ft_pipeline.core.settlements import build_partition
from ft_pipeline.resources import PipelineResource
from ft_pipeline.settings import Settings
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs

EMAIL = "jane.doe@example.com"
LAST_DAY = date(2024, 1, 20)


def _day_rows(day: date, recent: bool, with_bad_agent: bool) -> list[dict]:
    """Ten records of a steady agent that always gets an edit deleting boilerplate, and optionally ten of an
    agent that slips in the last 7 days: mostly rejected, slow and less confident."""
    rows = []
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    for i in range(10):
        answer = f"Step {i}: restart the router on {day.isoformat()} and wait one minute."
        rows.append(
            raw_log(
                f"ok-{day.isoformat()}-{i}",
                timestamp=noon,
                task="support",
                agent="ok",
                user_id=EMAIL,
                output=f"As an AI language model, I must say: {answer}" if i < 5 else answer,
                final_output=answer if i < 5 else None,
                decision="edited" if i < 5 else "accepted",
                quality_score=9.0,
                confidence=0.9,
                latency_ms=100.0 + i,
                cost_usd=0.01,
            )
        )
        if with_bad_agent:
            accepted = i < (2 if recent else 9)
            rows.append(
                raw_log(
                    f"bad-{day.isoformat()}-{i}",
                    timestamp=noon,
                    task="billing",
                    agent="bad",
                    user_id="u2",
                    output=f"Your invoice {i} of {day.isoformat()} is paid.",
                    decision="accepted" if accepted else "rejected",
                    quality_score=8.0,
                    confidence=0.5 if recent else 0.9,
                    latency_ms=3000.0 if recent else 200.0,
                )
            )
    return rows


def _prepare_lake(data_dir, with_bad_agent: bool) -> Settings:
    """Raw logs of 20 days and their settlements, built by the settlements stage itself."""
    settings = Settings.from_env(data_dir=str(data_dir))
    for back in range(20):
        day = LAST_DAY - timedelta(days=back)
        write_raw_logs(settings.lake_dir, day.isoformat(), _day_rows(day, back < 7, with_bad_agent))
        build_partition(settings, day.isoformat())
    assert len(partition_dates(settings.lake_dir, "settlements")) == 20
    return settings


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_materialize_writes_report_and_failing_checks_name_the_offender(tmp_path):
    settings = _prepare_lake(tmp_path, with_bad_agent=True)
    result = materialize([pattern_report], resources={"pipeline": PipelineResource(data_dir=str(tmp_path))})
    assert result.success

    report = json.loads((settings.reports_dir / "pattern_report.json").read_text())
    markdown = (settings.reports_dir / "pattern_report.md").read_text()
    assert report["as_of"] == LAST_DAY.isoformat()
    # The slipping agent's recent acceptances are below the settlements' confidence filter.
    assert report["totals"] == {
        "records": 400,
        "reviewed": 400,
        "settled": 200 + 13 * 9,
        "accepted": 100 + 13 * 9 + 7 * 2,
        "edited": 100,
        "rejected": 13 + 7 * 8,
        "pending": 0,
    }
    assert report["edit_patterns"]["ok"]["deleted"][0]["rate"] == 1.0
    assert "as an ai language model" in report["edit_patterns"]["ok"]["deleted"][0]["text"]
    assert EMAIL not in json.dumps(report) + markdown
    assert "[EMAIL]" in report["groups"]["user_id"]

    metadata = result.asset_materializations_for_node("pattern_report")[0].metadata
    assert metadata["acceptance_rate/support"].value == 0.5
    assert metadata["acceptance_rate/billing"].value == (13 * 9 + 7 * 2) / 200
    assert metadata["records"].value == 400
    assert metadata["report"].value == markdown

    checks = _checks(result)
    assert {c.severity for c in checks.values()} == {AssetCheckSeverity.WARN}
    assert not any(c.passed for c in checks.values())
    assert "agent bad" in checks["no_regressions"].description and "agent ok" not in checks["no_regressions"].description
    assert "agent bad: rejection rate 80.0%" in checks["rejection_rate_alert"].description
    assert "task billing: latency p95 3000 ms" in checks["latency_p95_alert"].description
    assert "agent bad: mean confidence fell 0.90 -> 0.50" in checks["confidence_drop_alert"].description


def test_checks_pass_on_stable_data_and_thresholds_come_from_run_config(tmp_path):
    _prepare_lake(tmp_path, with_bad_agent=False)
    result = materialize(
        [pattern_report],
        resources={"pipeline": PipelineResource(data_dir=str(tmp_path))},
        run_config={"ops": {"pattern_report": {"config": {"alert_latency_p95_ms": 50.0}}}},
    )
    checks = _checks(result)
    assert checks["no_regressions"].passed and checks["rejection_rate_alert"].passed
    assert checks["confidence_drop_alert"].passed
    assert not checks["latency_p95_alert"].passed
    assert "task support: latency p95" in checks["latency_p95_alert"].description
    assert result.asset_materializations_for_node("pattern_report")[0].asset_key == AssetKey("pattern_report")

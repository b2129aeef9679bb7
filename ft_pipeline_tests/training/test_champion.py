"""Tests of the champion alias: promotion, rollback, history and the live acceptance comparison."""

import pytest

from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import (
    champion_history,
    current_champion,
    live_acceptance,
    promote,
    rollback,
)
from ft_pipeline.training.tracking import client, registered_model_name
from ft_pipeline_tests.registry_fixtures import register_versions


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """One data dir and MLflow store for the module (creating a store takes seconds)."""
    return Settings(data_dir=str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def task(settings, request):
    """A task of its own per test whose registry holds three adapter versions, none of them champion yet."""
    task = request.node.name.removeprefix("test_")[:40].replace("_", "-")
    register_versions(settings, task)
    return task


def test_no_champion_before_the_first_promotion(settings, task):
    assert current_champion(settings, task) is None
    assert current_champion(settings, "never-seen") is None
    assert champion_history(settings, task) == []
    with pytest.raises(LookupError):
        rollback(settings, task)


def test_promote_moves_the_alias_records_history_and_tags(settings, task):
    first = promote(settings, task, 1, "beats the base")
    promote(settings, task, 2, "beats v1")
    assert current_champion(settings, task) == 2
    assert promote(settings, task, 2, "again") is None
    history = champion_history(settings, task)
    assert [(h["action"], h["from"], h["to"], h["reason"]) for h in history] == [
        ("promote", None, 1, "beats the base"),
        ("promote", 1, 2, "beats v1"),
    ]
    assert first == history[0] and history[0]["at"]
    tags = client(settings).get_model_version(registered_model_name(task), "1").tags
    assert tags["champion"].startswith("replaced by v2")


def test_rollback_restores_previous_champions_in_order(settings, task):
    for version in (1, 2, 3):
        promote(settings, task, version, f"v{version} is better")
    assert rollback(settings, task, reason="live acceptance fell") == (3, 2)
    assert current_champion(settings, task) == 2
    # a second rollback goes further back, not forward to the version just rolled back
    assert rollback(settings, task) == (2, 1)
    assert current_champion(settings, task) == 1
    last = champion_history(settings, task)[-1]
    assert (last["action"], last["from"], last["to"], last["reason"]) == ("rollback", 2, 1, "manual rollback")
    assert champion_history(settings, task)[-2]["reason"] == "live acceptance fell"
    with pytest.raises(LookupError):
        rollback(settings, task)
    assert rollback(settings, task, to_version=3) == (1, 3)
    with pytest.raises(ValueError):
        rollback(settings, task, to_version=3)
    with pytest.raises(FileNotFoundError):
        rollback(settings, task, to_version=7)


def findings(settings, task, rates):
    """live_acceptance of `task` on a report whose adapter_version group holds {key: (acceptance_rate, n)}."""
    report = {"groups": {"adapter_version": {k: {"acceptance_rate": r, "n": n} for k, (r, n) in rates.items()}}}
    return [f for f in live_acceptance(settings, report) if f["task"] == task]


def test_live_acceptance_flags_a_significant_drop_after_promotion(settings, task):
    promote(settings, task, 1, "first")
    promote(settings, task, 2, "better offline")
    [dropped] = findings(settings, task, {f"{task}:1": (0.80, 400), f"{task}:2": (0.60, 400)})
    assert dropped["dropped"] and dropped["p_value"] < 0.001
    assert (dropped["champion"], dropped["predecessor"]) == (2, 1)
    assert dropped["rollback_command"] == f"ft-pipeline rollback {task} --to 1"
    # plain version keys are read too; a small or favourable difference is no alarm
    [steady] = findings(settings, task, {"1": (0.80, 400), "2": (0.78, 400)})
    assert not steady["dropped"]
    [better] = findings(settings, task, {"1": (0.60, 400), "2": (0.80, 400)})
    assert not better["dropped"]
    assert findings(settings, task, {"2": (0.1, 400)}) == []

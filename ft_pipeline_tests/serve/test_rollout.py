"""Staged rollout: tiers, arm assignment, decisions, and whole rollouts on simulated traffic written into a lake."""

import hashlib
import json
import random
from datetime import UTC, datetime

import pytest
from mlflow.exceptions import MlflowException

from ft_pipeline.core.ingest import ingest
from ft_pipeline.serve.rollout import (
    CANDIDATE,
    CHAMPION,
    ArmEvidence,
    act_by_hand,
    active_rollouts,
    arm,
    decide,
    describe,
    evaluate,
    lake_stamp,
    parse_tiers,
    read_rollout,
    rollout_evidence,
    stages_for,
    start,
    unit_of,
)
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import champion_history, champion_lineage, current_champion, promote
from ft_pipeline.training.tracking import client, registered_model_name
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs
from ft_pipeline_tests.registry_fixtures import register_versions

MIN_REVIEWED = 50


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """One data dir and MLflow store for the module (creating a store takes seconds)."""
    return Settings(data_dir=str(tmp_path_factory.mktemp("data")), rollout_min_reviewed=MIN_REVIEWED)


@pytest.fixture
def task(settings, request):
    """A task of its own per test with registered versions 1 and 2, v1 the champion."""
    name = request.node.name.removeprefix("test_")
    task = name[:32].replace("_", "-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:6]
    register_versions(settings, task)
    promote(settings, task, 1, "the first adapter")
    return task


def test_tiers_map_task_patterns_to_stages_first_match_wins():
    assert parse_tiers("low=100;medium=10,50,100;high=5,25,50,100") == {
        "low": [100],
        "medium": [10, 50, 100],
        "high": [5, 25, 50, 100],
    }
    settings = Settings(rollout_task_tiers="game-*=high;chat=low;*=medium")
    assert stages_for(settings, "game-hosting") == [5, 25, 50, 100]
    assert stages_for(settings, "chat") == [100]
    assert stages_for(settings, "other") == [10, 50, 100]
    assert stages_for(Settings(rollout_task_tiers="chat=low"), "other") == [100]
    for bad in ("medium=10,50", "x=50,10,100", "y=0,100", "=100"):
        with pytest.raises(ValueError):
            parse_tiers(bad)
    with pytest.raises(ValueError, match="not one of"):
        stages_for(Settings(rollout_task_tiers="*=nope"), "chat")


def test_200_users_split_in_proportion_and_stay_on_their_arm_as_stages_grow():
    users = [unit_of(f"user-{i}", []) for i in range(200)]
    arms = {}
    for percent in (5, 10, 25, 50, 100):
        arms[percent] = {u: arm("greet", 2, u, percent) for u in users}
        share = 100 * sum(a == CANDIDATE for a in arms[percent].values()) / len(users)
        assert abs(share - percent) <= 3
        # the same user gets the same arm every time
        assert all(arm("greet", 2, u, percent) == arms[percent][u] for u in users)
    # monotone: a user on the candidate at one stage is on it at every later stage
    for low, high in ((5, 10), (10, 25), (25, 50), (50, 100)):
        assert all(arms[high][u] == CANDIDATE for u in users if arms[low][u] == CANDIDATE)
    # without a user, a request is assigned by its messages
    chat = [{"role": "user", "content": "hi"}]
    assert unit_of(None, chat) == unit_of("", chat) != unit_of(None, [{"role": "user", "content": "ho"}])


def evidence(cand: tuple[int, int], champ: tuple[int, int], stage_reviewed=None, **cand_fields) -> dict:
    """Arm evidence from (accepted, reviewed) pairs; the candidate's reviewed calls all in this stage unless told."""
    (xa, na), (xb, nb) = cand, champ
    stage = na if stage_reviewed is None else stage_reviewed
    return {
        CANDIDATE: ArmEvidence(na, na, xa, 0, stage, **cand_fields),
        CHAMPION: ArmEvidence(nb, nb, xb, 0, nb, latency_p95_ms=100.0),
    }


def test_decide_waits_for_evidence_rolls_back_on_worse_acceptance_errors_or_latency_and_advances_otherwise():
    settings = Settings(rollout_min_reviewed=100, rollout_alpha=0.05)
    assert decide(settings, evidence((10, 99), (500, 1000))).action == "hold"  # too few reviewed, even if bad
    worse = decide(settings, evidence((40, 100), (500, 1000)))
    assert worse.action == "rollback" and worse.p_value < 0.05 and "significantly below" in worse.reason
    assert worse.evidence["candidate"]["acceptance_rate"] == 0.4 and worse.evidence["champion"]["reviewed"] == 1000
    # a small dip is not significant; a better candidate advances
    assert decide(settings, evidence((47, 100), (500, 1000))).action == "advance"
    better = decide(settings, evidence((70, 100), (500, 1000)))
    assert better.action == "advance" and better.p_value > 0.5
    # enough evidence over the rollout but not in this stage: rollback is possible, advance is not
    assert decide(settings, evidence((80, 150), (500, 1000), stage_reviewed=20)).action == "hold"
    assert decide(settings, evidence((30, 150), (500, 1000), stage_reviewed=20)).action == "rollback"
    slow = decide(settings, evidence((60, 100), (500, 1000), latency_p95_ms=settings.alert_latency_p95_ms + 1))
    assert slow.action == "rollback" and "latency p95" in slow.reason
    rejected = evidence((60, 100), (500, 1000))
    rejected[CANDIDATE].rejected = 30
    assert decide(settings, rejected).action == "rollback"
    # a threshold the champion crosses as well does not count against the candidate
    rejected[CHAMPION].rejected = 300
    assert decide(settings, rejected).action == "advance"
    # calls its adapter failed to answer roll back before any review
    failing = evidence((0, 0), (500, 1000))
    failing[CANDIDATE].calls, failing[CANDIDATE].errors = 100, 6
    broken = decide(settings, failing)
    assert broken.action == "rollback" and "error rate" in broken.reason
    failing[CANDIDATE].errors = 5
    assert decide(settings, failing).action == "hold"


def test_first_adapter_and_one_stage_tiers_promote_at_once(settings, task):
    mlflow = client(settings)
    fresh = "fresh-task"
    mlflow.create_registered_model(registered_model_name(fresh))
    (settings.adapters_dir / fresh / "1").mkdir(parents=True)
    mlflow.create_model_version(registered_model_name(fresh), source=(settings.adapters_dir / fresh / "1").as_uri())
    assert start(settings, fresh, 1, "beats the base") == (1, None)
    assert current_champion(settings, fresh) == 1 and read_rollout(settings, fresh) is None
    assert "first adapter" in champion_history(settings, fresh)[-1]["reason"]
    assert start(settings.replace(rollout_task_tiers="*=low"), task, 2, "beats v1") == (2, None)
    assert current_champion(settings, task) == 2 and champion_lineage(settings, task) == [1, 2]


def test_a_promotion_starts_a_rollout_again_is_a_no_op_and_a_newer_candidate_supersedes(settings, task):
    after, rollout = start(settings, task, 2, "beats v1")
    assert after == 1 and rollout["percent"] == 10 and rollout["experiment_id"] == f"rollout:{task}:2"
    assert current_champion(settings, task) == 1
    alias = client(settings).get_model_version_by_alias(registered_model_name(task), "candidate")
    assert int(alias.version) == 2
    assert start(settings, task, 2, "beats v1 again")[1]["summary"].startswith("v2 already rolls out")
    assert start(settings, task, 3, "beats v1 too")[1]["candidate"] == 3
    assert [(h["action"], h["to"]) for h in champion_history(settings, task)] == [
        ("promote", 1),
        ("rollout-start", 2),
        ("rollout-abort", 2),
        ("rollout-start", 3),
    ]
    assert champion_lineage(settings, task) == [1]  # rollout steps leave the champion's lineage alone
    assert [r.candidate for r in active_rollouts(settings) if r.task == task] == [3]


class Traffic:
    """Simulated users of a task hitting the gateway: each call logged on its arm with a decision, into today's
    raw_logs partition, as the gateway's calls land there after ingest."""

    def __init__(self, settings, task, acceptance: dict[str, float], seed=0):
        self.settings, self.task, self.acceptance = settings, task, acceptance
        self.rng, self.rows, self.users = random.Random(seed), [], 0

    def send(self, calls: int) -> None:
        state = read_rollout(self.settings, self.task)
        for _ in range(calls):
            self.users += 1
            user = f"user-{self.users}"
            side = arm(self.task, state.candidate, unit_of(user, []), state.percent)
            version = state.candidate if side == CANDIDATE else state.champion
            decision = "accepted" if self.rng.random() < self.acceptance[side] else "edited"
            self.rows.append(self._row(user, side, version, decision))
        # calls no one reviewed yet and shadow answers are no evidence
        self.rows.append(self._row("user-0", CANDIDATE, state.candidate, "pending"))
        self.rows.append(self._row("user-0", "shadow", state.candidate, "pending", metadata={"shadow": True}))
        write_raw_logs(self.settings.lake_dir, datetime.now(UTC).date().isoformat(), self.rows)

    def _row(self, user, side, version, decision, **fields):
        state = read_rollout(self.settings, self.task)
        return raw_log(
            f"{self.task}-{len(self.rows)}",
            task=self.task,
            timestamp=datetime.now(UTC),
            user_id=user,
            variant=side,
            adapter_version=str(version),
            experiment_id=state.experiment_id,
            decision=decision,
            latency_ms=120.0,
            **fields,
        )


def run_rollout(settings, task, traffic: Traffic, rounds=30) -> list[dict]:
    """Send traffic and step the rollout until it ends; the steps taken."""
    steps = []
    for _ in range(rounds):
        traffic.send(100)
        steps.append(evaluate(settings, task))
        if steps[-1]["action"] in ("rollback", "complete"):
            break
    return steps


def test_a_truly_worse_candidate_is_rolled_back_within_the_configured_evidence(settings, task):
    start(settings, task, 2, "beats v1 offline")
    steps = run_rollout(settings, task, Traffic(settings, task, {CANDIDATE: 0.45, CHAMPION: 0.8}))
    assert steps[-1]["action"] == "rollback" and {s["action"] for s in steps[:-1]} == {"hold"}
    final = steps[-1]["evidence"]["candidate"]
    # rolled back as soon as it had the configured evidence, at the first stage: 10% of traffic
    assert MIN_REVIEWED <= final["reviewed"] < MIN_REVIEWED + 30 and steps[-1]["stage_before"] == 10
    assert steps[-1]["p_value"] < settings.rollout_alpha
    state = read_rollout(settings, task)
    assert state.status == "rolled_back" and current_champion(settings, task) == 1
    with pytest.raises(MlflowException):
        client(settings).get_model_version_by_alias(registered_model_name(task), "candidate")
    history = champion_history(settings, task)
    assert [h["action"] for h in history] == ["promote", "rollout-start"] + ["rollout-hold"] * (len(steps) - 1) + [
        "rollout-rollback"
    ]
    last = history[-1]
    assert last["evidence"]["candidate"]["reviewed"] == final["reviewed"] and last["stage"] == 10
    assert last["evidence"]["p_value"] == steps[-1]["p_value"] and last["by"] == "auto"
    # pending calls and shadow answers were not counted as reviewed
    assert final["calls"] == final["reviewed"] + len(steps)
    assert evaluate(settings, task)["action"] == "none"


@pytest.mark.parametrize("candidate_acceptance", [0.8, 0.9], ids=["equal", "better"])
def test_an_equal_or_better_candidate_completes_every_stage_and_becomes_champion(settings, task, candidate_acceptance):
    start(settings, task, 2, "beats v1 offline")
    steps = run_rollout(settings, task, Traffic(settings, task, {CANDIDATE: candidate_acceptance, CHAMPION: 0.8}, seed=1))
    actions = [s["action"] for s in steps]
    assert actions[-1] == "complete" and actions.count("advance") == 2 and "rollback" not in actions
    assert [s["stage_before"] for s in steps if s["action"] in ("advance", "complete")] == [10, 50, 100]
    assert current_champion(settings, task) == 2 and champion_lineage(settings, task) == [1, 2]
    assert read_rollout(settings, task).status == "completed"
    history = champion_history(settings, task)
    moves = [(h["action"], h.get("stage")) for h in history if h["action"] != "rollout-hold"]
    assert moves == [
        ("promote", None),
        ("rollout-start", 10),
        ("rollout-advance", 50),
        ("rollout-advance", 100),
        ("rollout-complete", 100.0),
    ]
    assert all("p_value" in h["evidence"] for h in history[2:])
    assert history[-1]["from"] == 1 and history[-1]["to"] == 2


def test_by_hand_hold_stops_advances_advance_moves_on_and_abort_keeps_the_champion(settings, task):
    start(settings, task, 2, "beats v1 offline")
    traffic = Traffic(settings, task, {CANDIDATE: 0.8, CHAMPION: 0.8}, seed=2)
    act_by_hand(settings, task, "hold", "waiting for the launch")
    for _ in range(8):
        traffic.send(100)
    held = evaluate(settings, task)
    assert held["action"] == "hold" and "held by hand" in held["reason"]
    assert act_by_hand(settings, task, "advance")["rollout"]["percent"] == 50
    shown = describe(settings, task)
    assert shown["rollout"]["paused"] is False and shown["next"]["action"] in ("hold", "advance")
    assert [s["action"] for s in shown["steps"]][-2:] == ["rollout-hold", "rollout-advance"]
    act_by_hand(settings, task, "abort", "launch cancelled")
    assert read_rollout(settings, task).status == "aborted" and current_champion(settings, task) == 1
    by_hand = [h for h in champion_history(settings, task) if h.get("by") == "hand"]
    assert [h["action"] for h in by_hand] == ["rollout-hold", "rollout-advance", "rollout-abort"]
    assert by_hand[-1]["reason"] == "launch cancelled"
    with pytest.raises(LookupError):
        act_by_hand(settings, task, "advance")


def test_evidence_reads_only_the_rollouts_calls(settings, task):
    start(settings, task, 2, "beats v1 offline")
    state = read_rollout(settings, task)
    day = datetime.now(UTC).date().isoformat()
    now = datetime.now(UTC)
    rows = [
        raw_log(f"a-{task}", task=task, timestamp=now, experiment_id=state.experiment_id, variant=CANDIDATE, latency_ms=10.0),
        raw_log(f"b-{task}", task=task, timestamp=now, experiment_id=state.experiment_id, variant=CHAMPION, decision="rejected"),
        raw_log(f"c-{task}", task=task, timestamp=now, experiment_id="another", variant=CANDIDATE),
        raw_log(f"d-{task}", task="other", timestamp=now, experiment_id=state.experiment_id, variant=CANDIDATE),
        raw_log(
            f"e-{task}",
            task=task,
            timestamp=now,
            experiment_id=state.experiment_id,
            variant=CANDIDATE,
            metadata={"fallback": "gone"},
        ),
    ]
    write_raw_logs(settings.lake_dir, day, rows)
    found = rollout_evidence(settings, task, state)
    cand = found[CANDIDATE]
    assert (cand.calls, cand.accepted, cand.errors, cand.latency_p95_ms) == (2, 2, 1, 10.0)
    assert (found[CHAMPION].reviewed, found[CHAMPION].rejected) == (1, 1)

    # feedback that arrives later decides the call: it is rejected now, and the sensor's stamp of the evidence changes
    stamp = lake_stamp(settings, state)
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    late = {"kind": "feedback", "log_id": f"a-{task}", "feedback_at": now.isoformat(), "decision": "rejected"}
    (settings.inbox_dir / f"feedback-{task}.jsonl").write_text(json.dumps(late) + "\n")
    ingest(settings)
    cand = rollout_evidence(settings, task, state)[CANDIDATE]
    assert (cand.calls, cand.accepted, cand.rejected) == (2, 1, 1)
    assert lake_stamp(settings, state) != stamp


def test_the_cli_shows_a_rollout_and_acts_on_it_by_hand(settings, task, capsys):
    from ft_pipeline.cli import main

    args = ["--data-dir", str(settings.root), "rollout", task]
    assert main(args) == 0 and "no rollout yet" in capsys.readouterr().out
    start(settings, task, 2, "beats v1 offline")
    Traffic(settings, task, {CANDIDATE: 0.8, CHAMPION: 0.8}).send(40)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "v2 against champion v1: active at 10%" in out and "next automatic step: hold: waiting for evidence" in out
    assert "rollout-start" in out
    assert main([*args, "--hold", "--reason", "launch week"]) == 0
    assert "held by hand" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rollout"]["paused"] is True and shown["steps"][-1]["reason"] == "launch week"
    assert main([*args, "--abort"]) == 0 and main([*args, "--advance"]) == 2
    assert "no active rollout" in capsys.readouterr().err
    assert main(["--data-dir", str(settings.root), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rollouts"][task]["status"] == "aborted"
    assert main(["--data-dir", str(settings.root), "status"]) == 0
    assert f"{task}: v2 against champion v1: aborted at 0%" in capsys.readouterr().out


def test_a_rollback_by_hand_aborts_the_rollout_in_progress(settings, task, capsys):
    from ft_pipeline.cli import main

    start(settings, task, 2, "beats v1 offline")
    assert main(["--data-dir", str(settings.root), "rollback", task, "--to", "3", "--reason", "bad week"]) == 0
    assert "aborted the rollout of v2" in capsys.readouterr().out
    assert read_rollout(settings, task).status == "aborted" and current_champion(settings, task) == 3
    assert champion_history(settings, task)[-2]["reason"] == "aborted by a rollback: bad week"

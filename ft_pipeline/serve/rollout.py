"""Staged rollout of a task's candidate adapter: risk tiers of stages, arm assignment, durable state, live evidence per
arm, and the decision to advance, hold or roll back; every step is recorded in the task's alias history."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

from ft_pipeline.core.feedback import TABLE as FEEDBACK_TABLE
from ft_pipeline.core.feedback import create_joined_view
from ft_pipeline.core.io import TASK_NAME, partition_dates, partition_file, write_json_atomic
from ft_pipeline.core.segments import checked_model_key, is_segment
from ft_pipeline.core.stats import rate, two_proportion_test
from ft_pipeline.settings import Settings
from ft_pipeline.training.champion import alias_lock, append_history, current_champion, record_move
from ft_pipeline.training.tracking import client, registered_model_name

CANDIDATE_ALIAS = "candidate"
CANDIDATE, CHAMPION, SHADOW = "candidate", "champion", "shadow"
RAW_LOGS = "raw_logs"
REVIEWED = ("accepted", "edited", "rejected")
# hash buckets per percent point: stages may be fractional down to a hundredth of a percent
BUCKETS = 10_000


def parse_tiers(text: str) -> dict[str, list[float]]:
    """`low=100;medium=10,50,100` -> {tier: stages}; each tier's stages rise and end at 100."""
    tiers: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, stages = part.partition("=")
        values = [float(s) for s in stages.split(",") if s.strip()]
        if not name.strip() or not values or values[-1] != 100 or any(not 0 < v <= 100 for v in values):
            raise ValueError(f"FT_ROLLOUT_TIERS: {part!r} must be name=stage,...,100 with stages in (0, 100]")
        if values != sorted(set(values)):
            raise ValueError(f"FT_ROLLOUT_TIERS: the stages of {name.strip()!r} must rise")
        tiers[name.strip()] = values
    return tiers


def stages_for(settings: Settings, task: str) -> list[float]:
    """The stages of the task's risk tier: the first FT_ROLLOUT_TASK_TIERS pattern (fnmatch) the task matches; none: 100.
    A segment's model moves at once: its traffic is one user's (or agent's), which stages by user cannot split."""
    if is_segment(task):
        return [100.0]
    tiers = parse_tiers(settings.rollout_tiers)
    for part in filter(None, (p.strip() for p in settings.rollout_task_tiers.split(";"))):
        pattern, _, tier = part.partition("=")
        if fnmatch.fnmatchcase(task, pattern.strip()):
            if tier.strip() not in tiers:
                raise ValueError(f"FT_ROLLOUT_TASK_TIERS: tier {tier.strip()!r} is not one of FT_ROLLOUT_TIERS {sorted(tiers)}")
            return tiers[tier.strip()]
    return [100.0]


def bucket(task: str, version: int, unit: str) -> int:
    """Where a unit (user or request) falls in 0..BUCKETS-1 for a task's candidate: the same place at every stage."""
    digest = hashlib.sha256(f"{task}\0{version}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def arm(task: str, version: int, unit: str, percent: float) -> str:
    """The arm of a unit at a stage: the candidate for the lowest `percent` of buckets, so a unit on the candidate
    stays on it as the stages grow."""
    return CANDIDATE if bucket(task, version, unit) < percent * BUCKETS / 100 else CHAMPION


USER_UNIT = "user:"


def unit_of(user: Any, messages: list[dict[str, str]]) -> str:
    """What a request is assigned by: its `user` (OpenAI's field), else a hash of its messages."""
    if isinstance(user, str) and user:
        return f"{USER_UNIT}{user}"
    return "request:" + hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


@dataclass
class Rollout:
    """One candidate's rollout for a task: its stages, where it stands, and how it ended."""

    task: str
    candidate: int
    champion: int
    stages: list[float]
    stage: int = 0
    status: str = "active"  # active, completed, rolled_back, aborted
    paused: bool = False  # held by hand: no automatic advance, automatic rollback still on
    started_at: str = ""
    stage_started_at: str = ""
    updated_at: str = ""
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def percent(self) -> float:
        """The candidate's share of traffic now (0 once it ended without completing)."""
        if self.status == "completed":
            return 100.0
        return self.stages[self.stage] if self.active else 0.0

    @property
    def experiment_id(self) -> str:
        """The experiment id its calls are logged under, which the pattern report's A/B section reads too."""
        return f"rollout:{self.task}:{self.candidate}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "percent": self.percent, "experiment_id": self.experiment_id}


def state_path(settings: Settings, task: str) -> Path:
    """state/rollouts/<task>.json: the task's latest rollout."""
    return settings.state_dir / "rollouts" / f"{checked_model_key(task)}.json"


def read_rollout(settings: Settings, task: str) -> Rollout | None:
    """The task's latest rollout, active or ended, or None when it never had one."""
    path = state_path(settings, task)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(Rollout)}
    return Rollout(**{k: v for k, v in data.items() if k in names})


def active_rollouts(settings: Settings) -> list[Rollout]:
    """Every task's active rollout."""
    folder = settings.state_dir / "rollouts"
    paths = sorted(p for p in folder.glob("*.json") if TASK_NAME.fullmatch(p.stem)) if folder.is_dir() else []
    found = (read_rollout(settings, p.stem) for p in paths)
    return [r for r in found if r is not None and r.active]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _save(settings: Settings, state: Rollout) -> None:
    state.updated_at = _now()
    write_json_atomic(state.to_dict(), state_path(settings, state.task))


def _step(
    settings: Settings, state: Rollout, action: str, reason: str, by: str, evidence: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Append a step that leaves the champion where it is to the alias history."""
    entry = {
        "task": state.task,
        "action": f"rollout-{action}",
        "alias": CANDIDATE_ALIAS,
        "from": state.champion,
        "to": state.candidate,
        "at": _now(),
        "reason": reason,
        "by": by,
        "stage": state.percent,
        "stage_index": state.stage,
        "experiment_id": state.experiment_id,
        **({"evidence": evidence} if evidence is not None else {}),
    }
    return append_history(settings, state.task, entry)


def _end(settings: Settings, state: Rollout, status: str, reason: str) -> None:
    """Close the rollout: its state records how it ended and the candidate alias is removed."""
    from mlflow.exceptions import MlflowException

    state.status, state.reason = status, reason
    _save(settings, state)
    with contextlib.suppress(MlflowException):  # already gone
        client(settings).delete_registered_model_alias(registered_model_name(state.task), CANDIDATE_ALIAS)


def start(settings: Settings, task: str, version: int, reason: str) -> tuple[int | None, dict[str, Any] | None]:
    """The effect of a promotion: the first adapter of a task, or one of a tier whose only stage is 100, becomes the
    champion at once; otherwise `version` enters a rollout at its tier's first stage. Returns the champion after it and
    the rollout (None when it promoted at once)."""
    task, version = checked_model_key(task), int(version)
    with alias_lock(settings, task):
        before = current_champion(settings, task)
        stages = stages_for(settings, task)
        previous = read_rollout(settings, task)
        if previous is not None and previous.active and previous.candidate == version:
            return before, {**previous.to_dict(), "summary": f"v{version} already rolls out at {previous.percent:g}%"}
        if previous is not None and previous.active:
            _step(settings, previous, "abort", f"superseded by v{version}", "promotion")
            _end(settings, previous, "aborted", f"superseded by v{version}")
        if before is None or stages == [100.0]:
            why = "the task's first adapter: no champion to compare with live" if before is None else "its tier has one stage"
            record_move(settings, task, "promote", before, version, f"{reason}; promoted at once: {why}")
            return version, None
        at = _now()
        state = Rollout(task, version, before, stages, started_at=at, stage_started_at=at, reason=reason)
        _save(settings, state)
        client(settings).set_registered_model_alias(registered_model_name(task), CANDIDATE_ALIAS, str(version))
        _step(settings, state, "start", reason, "promotion")
        return before, {**state.to_dict(), "summary": f"v{version} rolls out: {state.percent:g}% of traffic first"}


@dataclass
class ArmEvidence:
    """What one arm's logged calls of a rollout show: counts over the rollout, reviewed calls in the current stage."""

    calls: int = 0
    reviewed: int = 0
    accepted: int = 0
    rejected: int = 0
    stage_reviewed: int = 0
    latency_p95_ms: float | None = None
    errors: int = 0  # calls of the arm its adapter could not answer (the base answered instead)

    @property
    def acceptance_rate(self) -> float | None:
        return rate(self.accepted, self.reviewed)

    @property
    def rejection_rate(self) -> float | None:
        return rate(self.rejected, self.reviewed)

    @property
    def error_rate(self) -> float | None:
        return rate(self.errors, self.calls)

    def to_dict(self) -> dict[str, Any]:
        rates = {"acceptance_rate": self.acceptance_rate, "rejection_rate": self.rejection_rate, "error_rate": self.error_rate}
        return {**dataclasses.asdict(self), **rates}


def rollout_evidence(settings: Settings, task: str, state: Rollout) -> dict[str, ArmEvidence]:
    """Per arm, the task's calls logged under the rollout's experiment id in the raw_logs lake, with their latest
    feedback; a call is reviewed when its decision is no longer pending."""
    import duckdb

    files = [str(path) for path in _since_start(settings, state, RAW_LOGS)]
    evidence = {CANDIDATE: ArmEvidence(), CHAMPION: ArmEvidence()}
    if not files:
        return evidence
    reviewed = "decision IN ('accepted', 'edited', 'rejected')"
    with duckdb.connect() as con:
        con.execute(
            "CREATE TEMP TABLE rollout_calls AS SELECT * FROM read_parquet(?, union_by_name = true) "
            "WHERE task = ? AND experiment_id = ? AND variant IN (?, ?)",
            [files, task, state.experiment_id, CANDIDATE, CHAMPION],
        )
        # each call as its latest feedback leaves it: the gateway logs calls pending, people decide later
        create_joined_view(con, "decided_calls", "rollout_calls", settings.lake_dir)
        rows = con.execute(
            f"""
            SELECT variant, count(*), count(*) FILTER (WHERE {reviewed}), count(*) FILTER (WHERE decision = 'accepted'),
                count(*) FILTER (WHERE decision = 'rejected'),
                count(*) FILTER (WHERE {reviewed} AND timestamp >= CAST(? AS TIMESTAMPTZ)),
                quantile_cont(latency_ms, 0.95),
                count(*) FILTER (WHERE json_extract_string(metadata, '$.fallback') IS NOT NULL)
            FROM decided_calls
            GROUP BY variant""",
            [state.stage_started_at],
        ).fetchall()
    for variant, calls, n, accepted, rejected, stage_n, p95, errors in rows:
        evidence[variant] = ArmEvidence(int(calls), int(n), int(accepted), int(rejected), int(stage_n), p95, int(errors))
    return evidence


@dataclass
class Decision:
    """What the evidence says to do with a rollout, and why."""

    action: str  # advance, hold, rollback
    reason: str
    p_value: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def decide(settings: Settings, evidence: dict[str, ArmEvidence]) -> Decision:
    """Roll back when more than FT_ROLLOUT_MAX_ERROR_RATE of FT_ROLLOUT_MIN_REVIEWED or more candidate calls failed
    to be served by its adapter, or when its acceptance is significantly below the champion's (one-sided z-test at
    FT_ROLLOUT_ALPHA) or its rejection rate or latency p95 crosses an alert threshold the champion's stays under, once
    it has FT_ROLLOUT_MIN_REVIEWED reviewed calls; advance when it also has that many in the current stage; else hold."""
    cand, champ = evidence[CANDIDATE], evidence[CHAMPION]
    p_value = None
    if cand.reviewed and champ.reviewed:
        z, _ = two_proportion_test(cand.accepted, cand.reviewed, champ.accepted, champ.reviewed)
        p_value = NormalDist().cdf(z)  # P(a difference this low or lower | equal acceptance)
    summary = {"candidate": cand.to_dict(), "champion": champ.to_dict(), "p_value": p_value}
    need = settings.rollout_min_reviewed
    # an adapter that does not answer needs no reviews to be judged: its calls fell back to the base
    errors = cand.error_rate
    if cand.calls >= need and errors is not None and errors > settings.rollout_max_error_rate:
        return Decision(
            "rollback",
            f"error rate {errors:.1%} of {cand.calls} candidate calls crosses {settings.rollout_max_error_rate:.1%}",
            p_value,
            summary,
        )
    if cand.reviewed < need:
        return Decision("hold", f"waiting for evidence: {cand.reviewed} of {need} reviewed candidate calls", p_value, summary)
    if p_value is not None and p_value < settings.rollout_alpha:
        return Decision(
            "rollback",
            f"acceptance {cand.acceptance_rate:.1%} (n={cand.reviewed}) is significantly below the champion's "
            f"{champ.acceptance_rate:.1%} (n={champ.reviewed}), one-sided p={p_value:.3g} < {settings.rollout_alpha}",
            p_value,
            summary,
        )
    for name, value, theirs, threshold in (
        ("rejection rate", cand.rejection_rate, champ.rejection_rate, settings.alert_rejection_rate),
        ("latency p95 (ms)", cand.latency_p95_ms, champ.latency_p95_ms, settings.alert_latency_p95_ms),
    ):
        # a threshold the champion crosses too is the task's problem, not the candidate's
        if value is not None and value > threshold and not (theirs is not None and theirs > threshold):
            return Decision("rollback", f"{name} {value:.3g} crosses the alert threshold {threshold:g}", p_value, summary)
    if cand.stage_reviewed < need:
        return Decision(
            "hold",
            f"waiting for evidence: {cand.stage_reviewed} of {need} reviewed candidate calls in this stage",
            p_value,
            summary,
        )
    return Decision("advance", f"acceptance not significantly worse (one-sided p={_p(p_value)})", p_value, summary)


def _p(p_value: float | None) -> str:
    return "n/a" if p_value is None else f"{p_value:.3g}"


def _advance(settings: Settings, state: Rollout, reason: str, by: str, evidence: dict[str, Any] | None) -> str:
    """Move to the next stage, or complete the rollout after the last: the candidate becomes the champion."""
    if state.stage + 1 < len(state.stages):
        state.stage += 1
        state.stage_started_at = _now()
        _save(settings, state)
        _step(settings, state, "advance", reason, by, evidence)
        return "advance"
    before = current_champion(settings, state.task)
    record_move(
        settings,
        state.task,
        "rollout-complete",
        before,
        state.candidate,
        reason,
        by=by,
        stage=100.0,
        stage_index=state.stage,
        experiment_id=state.experiment_id,
        **({"evidence": evidence} if evidence is not None else {}),
    )
    _end(settings, state, "completed", reason)
    return "complete"


def evaluate(settings: Settings, task: str) -> dict[str, Any]:
    """One automatic step of the task's active rollout: read the evidence, decide, act and record it."""
    task = checked_model_key(task)
    with alias_lock(settings, task):
        state = read_rollout(settings, task)
        if state is None or not state.active:
            return {"task": task, "action": "none", "reason": "no active rollout", "rollout": state.to_dict() if state else None}
        stage_before = state.percent
        decision = decide(settings, rollout_evidence(settings, task, state))
        action = decision.action
        if action == "advance" and state.paused:
            action, decision.reason = "hold", f"held by hand; the evidence would advance: {decision.reason}"
        if action == "rollback":
            _step(settings, state, "rollback", decision.reason, "auto", decision.evidence)
            _end(settings, state, "rolled_back", decision.reason)
        elif action == "advance":
            action = _advance(settings, state, decision.reason, "auto", decision.evidence)
        else:
            _step(settings, state, "hold", decision.reason, "auto", decision.evidence)
        return {
            "task": task,
            "action": action,
            "reason": decision.reason,
            "p_value": decision.p_value,
            "stage_before": stage_before,
            "evidence": decision.evidence,
            "rollout": state.to_dict(),
        }


def act_by_hand(settings: Settings, task: str, action: str, reason: str = "") -> dict[str, Any]:
    """`advance` (to the next stage, or complete), `hold` (pause automatic advances) or `abort` (end the rollout, the
    champion stays) the task's active rollout, recorded in the history; LookupError when there is none."""
    task = checked_model_key(task)
    with alias_lock(settings, task):
        state = read_rollout(settings, task)
        if state is None or not state.active:
            raise LookupError(f"task {task!r} has no active rollout")
        evidence = decide(settings, rollout_evidence(settings, task, state)).evidence
        reason = reason or f"{action} by hand"
        if action == "advance":
            state.paused = False
            done = _advance(settings, state, reason, "hand", evidence)
        elif action == "hold":
            state.paused = True
            _save(settings, state)
            _step(settings, state, "hold", reason, "hand", evidence)
            done = "hold"
        elif action == "abort":
            _step(settings, state, "abort", reason, "hand", evidence)
            _end(settings, state, "aborted", reason)
            done = "abort"
        else:
            raise ValueError(f"action {action!r} must be advance, hold or abort")
        return {"task": task, "action": done, "reason": reason, "rollout": state.to_dict()}


def _since_start(settings: Settings, state: Rollout, table: str) -> list[Path]:
    """The partition files of a lake table from the rollout's first day on: where its calls, and feedback on them, are."""
    days = [d for d in partition_dates(settings.lake_dir, table) if d >= state.started_at[:10]]
    return [partition_file(settings.lake_dir, table, d) for d in days]


def lake_stamp(settings: Settings, state: Rollout) -> str:
    """A short hash of the files a rollout's evidence is read from (its calls and the feedback on them) and of its
    state: it changes when any of them does."""
    parts = [state.updated_at]
    for path in _since_start(settings, state, RAW_LOGS) + _since_start(settings, state, FEEDBACK_TABLE):
        st = path.stat()
        parts.append(f"{path.parent.parent.name}/{path.parent.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def describe(settings: Settings, task: str) -> dict[str, Any]:
    """The task's latest rollout, the evidence of an active one with what the next automatic step would do, and its
    recorded steps."""
    from ft_pipeline.training.champion import champion_history

    task = checked_model_key(task)
    state = read_rollout(settings, task)
    if state is None:
        return {"task": task, "rollout": None, "next": None, "steps": []}
    decision = decide(settings, rollout_evidence(settings, task, state)) if state.active else None
    steps = [e for e in champion_history(settings, task) if e.get("experiment_id") == state.experiment_id]
    return {
        "task": task,
        "rollout": state.to_dict(),
        "next": dataclasses.asdict(decision) if decision else None,
        "steps": steps,
    }

"""The `champion` alias of each task's registered model: who serves, promotions, rollbacks and their history."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ft_pipeline.core.lineage import adapter_dir
from ft_pipeline.core.locks import hold
from ft_pipeline.core.segments import checked_model_key
from ft_pipeline.settings import Settings
from ft_pipeline.training.tracking import client, registered_model_name

ALIAS = "champion"

# the effect of a promotion: (settings, task, version, reason) -> (champion after it, summary of a rollout it started)
Move = Callable[[Settings, str, int, str], tuple[int | None, dict[str, Any] | None]]


def history_path(settings: Settings, task: str) -> Path:
    """evaluations/<task>/champion_history.jsonl: one line per move of the alias."""
    return settings.evaluations_dir / checked_model_key(task) / "champion_history.jsonl"


def current_champion(settings: Settings, task: str) -> int | None:
    """Version the task's `champion` alias points at, or None when there is none (or no registered model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return int(client(settings).get_model_version_by_alias(registered_model_name(task), ALIAS).version)
    except MlflowException:
        return None


def champion_history(settings: Settings, task: str) -> list[dict[str, Any]]:
    """Every recorded move of the task's alias, oldest first: action, from, to, at, reason."""
    path = history_path(settings, task)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def champion_lineage(settings: Settings, task: str) -> list[int]:
    """The stack of champions from the history: a promotion pushes a version, a rollback returns to an earlier one."""
    stack: list[int] = []
    # steps of a staged rollout that leave the champion where it is name their own alias
    for entry in (e for e in champion_history(settings, task) if e.get("alias", ALIAS) == ALIAS):
        if entry["action"] == "rollback" and entry["to"] in stack:
            del stack[stack.index(entry["to"]) + 1 :]
        else:
            stack.append(entry["to"])
    return stack


def record_move(
    settings: Settings, task: str, action: str, before: int | None, after: int, reason: str, **extra: Any
) -> dict[str, Any]:
    """Move the alias, tag both versions and append the move (with any `extra` fields) to the history."""
    at = datetime.now(UTC).isoformat()
    name = registered_model_name(task)
    mlflow_client = client(settings)
    mlflow_client.set_registered_model_alias(name, ALIAS, str(after))
    mlflow_client.set_model_version_tag(name, str(after), "champion", f"{action} from v{before} at {at}")
    if before is not None:
        mlflow_client.set_model_version_tag(name, str(before), "champion", f"replaced by v{after} ({action}) at {at}")
    return append_history(
        settings, task, {"task": task, "action": action, "from": before, "to": after, "at": at, "reason": reason, **extra}
    )


def append_history(settings: Settings, task: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one entry to the task's alias history and return it."""
    path = history_path(settings, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One O_APPEND write per line: concurrent writers never interleave or overwrite earlier lines, which a
    # read-modify-rename of the whole file could do; registry tags are size-limited, so this file is the full record.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def alias_lock(settings: Settings, task: str) -> AbstractContextManager:
    """The lock that makes a task's alias moves take turns: each reads the champion, decides and moves it alone."""
    return hold(settings.root, f"alias-{checked_model_key(task)}")


def promote(settings: Settings, task: str, version: int, reason: str) -> dict[str, Any] | None:
    """Point the task's champion alias at `version` and record why; None when it already is the champion."""
    task = checked_model_key(task)
    with alias_lock(settings, task):
        before = current_champion(settings, task)
        if before == int(version):
            return None
        return record_move(settings, task, "promote", before, int(version), reason)


def promote_evaluated(settings: Settings, task: str, log: Any = print, move: Move | None = None) -> dict[str, Any]:
    """The promotion step: move the alias to the task's newest adapter when its evaluation decided so, still holds
    (the champion it was compared with is still the champion) and this is no dry run; returns what happened and why.

    `move` is the effect (default: the alias moves at once); a staged rollout passes its start, which returns the
    champion after it and a summary of the rollout it started."""
    from ft_pipeline.training.evaluation import latest_evaluation

    task = checked_model_key(task)
    with alias_lock(settings, task):
        evaluation = latest_evaluation(settings, task)
        if evaluation is None:
            raise LookupError(f"task {task!r}: the newest adapter has no evaluation; materialize adapter_evaluation first")
        version, before = int(evaluation["version"]), current_champion(settings, task)
        outcome = {"task": task, "version": version, "decision": evaluation["decision"], "champion_before": before}
        if evaluation["decision"] != "promote":
            reason = f"v{version} is kept out: " + "; ".join(evaluation["reasons"])
        elif before == version:
            reason = f"v{version} already is the champion"
        elif before != evaluation["champion_before"]:
            reason = f"the champion moved from v{evaluation['champion_before']} to v{before} since v{version} was evaluated; evaluate again"
        elif settings.dry_run:
            reason = f"dry run: v{version} would be promoted, the alias was not moved"
        else:
            reason = "; ".join(evaluation["reasons"])
            after, rollout = (move or _move_now)(settings, task, version, reason)
            if after == version:
                log(f"{task}: champion {'v' + str(before) if before is not None else 'none'} -> v{version}")
            else:
                log(f"{task}: champion stays {'v' + str(before)}; {rollout['summary'] if rollout else ''}")
            return {
                **outcome,
                "promoted": after == version,
                "champion_after": after,
                "rollout": rollout,
                "reason": reason,
                "dry_run": False,
            }
        log(f"{task}: champion stays {'v' + str(before) if before is not None else 'none'}: {reason}")
        return {
            **outcome,
            "promoted": False,
            "champion_after": before,
            "rollout": None,
            "reason": reason,
            "dry_run": bool(settings.dry_run),
        }


def _move_now(settings: Settings, task: str, version: int, reason: str) -> tuple[int, dict[str, Any] | None]:
    """The promotion's effect without a staged rollout: all traffic moves to `version` at once."""
    promote(settings, task, version, reason=reason)
    return version, None


def rollback(settings: Settings, task: str, to_version: int | None = None, reason: str = "manual rollback") -> tuple[int, int]:
    """Move the champion back to `to_version` (default: the champion before the current one); returns (from, to)."""
    task = checked_model_key(task)
    with alias_lock(settings, task):
        before = current_champion(settings, task)
        if before is None:
            raise LookupError(f"task {task!r} has no champion to roll back")
        if to_version is None:
            lineage = champion_lineage(settings, task)
            if before in lineage:
                lineage = lineage[: lineage.index(before)]
            if not lineage:
                raise LookupError(f"task {task!r}: champion v{before} has no predecessor in {history_path(settings, task)}")
            to_version = lineage[-1]
        to_version = int(to_version)
        if to_version == before:
            raise ValueError(f"task {task!r}: v{to_version} already is the champion")
        if not adapter_dir(settings.adapters_dir, task, to_version).is_dir():
            raise FileNotFoundError(f"task {task!r} has no adapter v{to_version} under {settings.adapters_dir}")
        record_move(settings, task, "rollback", before, to_version, reason)
        return before, to_version


def _live(groups: dict[str, Any], task: str, version: int) -> dict[str, Any] | None:
    """A version's row of the report's adapter_version group, logged as "<task>:<version>" or as "<version>"."""
    row = groups.get(f"{task}:{version}") or groups.get(str(version))
    return row if row and row.get("n") else None


def live_acceptance(settings: Settings, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task whose champion has a predecessor: both versions' live acceptance and whether the champion's fell significantly."""
    from ft_pipeline.core.stats import two_proportion_test

    groups = report.get("groups", {}).get("adapter_version", {})
    folders = sorted(settings.evaluations_dir.glob("*/champion_history.jsonl")) if settings.evaluations_dir.is_dir() else []
    findings = []
    for task in (path.parent.name for path in folders):
        champion = current_champion(settings, task)
        lineage = champion_lineage(settings, task)
        if champion is None or champion not in lineage or lineage.index(champion) == 0:
            continue
        predecessor = lineage[lineage.index(champion) - 1]
        now, before = _live(groups, task, champion), _live(groups, task, predecessor)
        if now is None or before is None:
            continue
        accepted_now, accepted_before = round(now["acceptance_rate"] * now["n"]), round(before["acceptance_rate"] * before["n"])
        # two-sided test read in one direction: conservative, and a rise never raises the alarm
        _, p_value = two_proportion_test(accepted_now, now["n"], accepted_before, before["n"])
        findings.append(
            {
                "task": task,
                "champion": champion,
                "predecessor": predecessor,
                "acceptance_rate": now["acceptance_rate"],
                "n": now["n"],
                "predecessor_acceptance_rate": before["acceptance_rate"],
                "predecessor_n": before["n"],
                "p_value": p_value,
                "dropped": now["acceptance_rate"] < before["acceptance_rate"] and p_value < settings.significance,
                "rollback_command": f"ft-pipeline rollback {task} --to {predecessor}",
            }
        )
    return findings

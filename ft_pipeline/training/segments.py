"""Training the segments of a task in one process: each qualifying segment built, trained, judged and promoted in turn,
on one base model loaded once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ft_pipeline.core.segments import checked_model_key, model_key, segment_key
from ft_pipeline.settings import Settings


def train_segments(
    settings: Settings, task: str, segments: list[str] | None = None, log: Callable[[str], None] = print
) -> dict[str, list[dict[str, Any]]]:
    """Bring the task's segments (or the named ones) up to date: each that qualifies and has FT_RETRAIN_THRESHOLD new
    examples gets a dataset, an adapter, an evaluation and, when it wins, the champion alias; returns what was trained,
    promoted, skipped (too few examples), left waiting (too few new ones) and failed, with the reason of each."""
    from ft_pipeline.core.datasets import build_task_dataset
    from ft_pipeline.serve.rollout import start
    from ft_pipeline.training.base_model import load_tokenizer, shared_base
    from ft_pipeline.training.champion import promote_evaluated
    from ft_pipeline.training.evaluation import evaluate_candidate
    from ft_pipeline.training.lora import train_task
    from ft_pipeline.training.status import segment_status

    task = checked_model_key(task)
    if not settings.segment_by:
        raise ValueError("segments are off: set FT_SEGMENT_BY to the field that defines them (user_id, agent, topic, ...)")
    rows = segment_status(settings, task)
    if segments is not None:
        wanted = {segment_key(segment) for segment in segments}
        rows = [row for row in rows if row["segment"] in wanted]
    report: dict[str, list[dict[str, Any]]] = {name: [] for name in ("trained", "promoted", "skipped", "waiting", "failed")}
    tokenizer = load_tokenizer(settings)
    with shared_base():
        for row in rows:
            key, entry = model_key(task, row["segment"]), {"segment": row["segment"], "settled": row["settled"]}
            if not row["qualified"]:
                report["skipped"].append({**entry, "reason": f"fewer than {settings.segment_min_examples} examples"})
                continue
            if row["until_retrain"] > 0:
                report["waiting"].append({**entry, "reason": f"{row['until_retrain']} new examples until the next training"})
                continue
            try:
                dataset = build_task_dataset(settings, key, tokenizer)
                if not dataset["validation"]["valid"]:
                    report["skipped"].append({**entry, "reason": "; ".join(dataset["validation"]["problems"])})
                    continue
                trained = train_task(settings, key, log=log)
                evaluation = evaluate_candidate(settings, key, trained.version, log=log)
                outcome = promote_evaluated(settings, key, log=log, move=start)
            except (ValueError, LookupError, OSError) as exc:
                # one segment's bad data or failed training does not stop the others
                report["failed"].append({**entry, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            result = {**entry, "version": trained.version, "decision": evaluation["decision"], "reason": outcome["reason"]}
            report["trained"].append(result)
            if outcome["promoted"]:
                report["promoted"].append(result)
    log(
        f"{task} segments: {len(report['trained'])} trained, {len(report['promoted'])} promoted, "
        f"{len(report['skipped'])} skipped, {len(report['waiting'])} waiting, {len(report['failed'])} failed"
    )
    return report

"""Evaluation of a candidate adapter against the base model and the champion on the test split: scores, tests, decision.

Evaluation only records; the promotion step (training/champion.py) moves the alias after the blocking checks."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ft_pipeline.core.io import read_jsonl, write_json_atomic
from ft_pipeline.core.lineage import adapter_dir, adapter_versions, dataset_dir, read_adapter_config
from ft_pipeline.core.segments import checked_model_key, split_model_key

CHRF_ORDER = 6
CHRF_BETA = 2.0
# Exact match is only meaningful for short answers (labels, numbers, yes/no); longer ones are scored by chrF alone.
SHORT_ANSWER_WORDS = 8
WILCOXON = "wilcoxon signed-rank on per-example loss, one-sided (candidate lower)"


def chrf(hypothesis: str, reference: str, order: int = CHRF_ORDER, beta: float = CHRF_BETA) -> float:
    """chrF (0-100): F-beta of character n-gram precision and recall averaged over n = 1..order, whitespace ignored."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    if not hyp or not ref:
        return 100.0 if hyp == ref else 0.0
    precisions, recalls = [], []
    for n in range(1, order + 1):
        hyp_grams = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        ref_grams = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        # Orders longer than either string have no n-grams; like sacrebleu's effective order, they are left out.
        if not hyp_grams or not ref_grams:
            continue
        matches = sum((hyp_grams & ref_grams).values())
        precisions.append(matches / sum(hyp_grams.values()))
        recalls.append(matches / sum(ref_grams.values()))
    precision, recall = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if precision == 0 and recall == 0:
        return 0.0
    b2 = beta * beta
    return 100.0 * (1 + b2) * precision * recall / (b2 * precision + recall)


def exact_match(hypothesis: str, reference: str) -> bool:
    """Equal after case folding and whitespace normalisation."""
    return " ".join(hypothesis.split()).casefold() == " ".join(reference.split()).casefold()


def paired_test(candidate: list[float], other: list[float]) -> dict[str, Any]:
    """Wilcoxon signed-rank test that the candidate's per-example losses are lower, with rank-biserial effect size."""
    import numpy as np
    from scipy.stats import rankdata, wilcoxon

    diff = np.asarray(candidate, dtype=float) - np.asarray(other, dtype=float)
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        # identical losses everywhere (e.g. an adapter that changes nothing): no evidence of improvement
        p_value, effect = 1.0, 0.0
    else:
        p_value = float(wilcoxon(diff, alternative="less", zero_method="wilcox").pvalue)
        ranks = rankdata(np.abs(nonzero))
        better, worse = ranks[nonzero < 0].sum(), ranks[nonzero > 0].sum()
        effect = float((better - worse) / (better + worse))
    return {
        "test": WILCOXON,
        "n": int(diff.size),
        "n_better": int((diff < 0).sum()),
        "n_worse": int((diff > 0).sum()),
        "p_value": p_value,
        "rank_biserial": effect,
        "median_difference": float(np.median(diff)) if diff.size else 0.0,
    }


# (test, verdict, who) of each rival a candidate must beat when it is there: the task's (or segment's) own champion,
# and for a segment its task's champion, the model the segment is served by until it has one of its own
RIVALS = (
    ("vs_base", "beats_base", "the base model"),
    ("vs_champion", "beats_champion", "the champion"),
    ("vs_task_champion", "beats_task_champion", "the task's champion"),
)


def gate(
    scores: dict[str, dict[str, Any]], tests: dict[str, dict[str, Any]], p_threshold: float, tolerance: float
) -> dict[str, dict[str, Any] | None]:
    """Each rival's verdict: `beats_base`, `beats_champion` and for a segment `beats_task_champion` (None when there is
    no such champion to compare with); a verdict holds whether it `passed` and the reasons."""
    verdicts: dict[str, dict[str, Any] | None] = {}
    for key, name, rival in RIVALS:
        if key not in tests:
            verdicts[name] = None
            continue
        p_value = tests[key]["p_value"]
        passed = p_value < p_threshold
        reasons = [
            f"beats {rival}: p={p_value:.3g} < {p_threshold}, median loss difference {tests[key]['median_difference']:.4f}"
            if passed
            else f"does not beat {rival}: p={p_value:.3g} >= {p_threshold}"
        ]
        verdicts[name] = {"passed": passed, "p_value": p_value, "reasons": reasons}
    for key, name, rival in RIVALS[1:]:
        champion_verdict = verdicts[name]
        if champion_verdict is None:
            continue
        candidate_chrf, champion_chrf = scores["candidate"]["chrf"], scores[key.removeprefix("vs_")]["chrf"]
        if candidate_chrf is not None and champion_chrf is not None:
            if candidate_chrf < champion_chrf - tolerance:
                champion_verdict["passed"] = False
                champion_verdict["reasons"].append(
                    f"generations worse than {rival}'s: chrF {candidate_chrf:.1f} < {champion_chrf:.1f} - {tolerance}"
                )
            else:
                champion_verdict["reasons"].append(
                    f"generations not worse than {rival}'s: chrF {candidate_chrf:.1f} vs {champion_chrf:.1f} (tolerance {tolerance})"
                )
    return verdicts


def decide(
    scores: dict[str, dict[str, Any]], tests: dict[str, dict[str, Any]], p_threshold: float, tolerance: float
) -> tuple[bool, list[str]]:
    """Whether the candidate should be promoted, and why: it must beat the base, and the champion if there is one."""
    verdicts = gate(scores, tests, p_threshold, tolerance)
    reasons: list[str] = []
    for verdict in verdicts.values():
        if verdict is not None:
            reasons += verdict["reasons"]
    if verdicts["beats_champion"] is None and verdicts["beats_task_champion"] is None:
        reasons.append("no other champion to compare with: beating the base model is enough")
    return all(v["passed"] for v in verdicts.values() if v is not None), reasons


def evaluation_path(settings: Any, task: str, version: int) -> Path:
    """evaluations/<task>/<version>.json."""
    return settings.evaluations_dir / checked_model_key(task) / f"{int(version)}.json"


def read_evaluation(settings: Any, task: str, version: int) -> dict[str, Any] | None:
    """A stored evaluation, or None when that version was never evaluated."""
    path = evaluation_path(settings, task, version)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def generation_sample(rows: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """A stable sample of rows ending in an assistant turn: the same ids every run, spread over the split by hash."""
    usable = [r for r in rows if r["messages"] and r["messages"][-1].get("role") == "assistant"]
    usable.sort(key=lambda r: hashlib.sha256(str(r["id"]).encode()).hexdigest())
    return usable[:size]


def score_model(
    model: Any, tokenizer: Any, examples: list[Any], gen_rows: list[dict[str, Any]], settings: Any, device: Any
) -> dict[str, Any]:
    """Loss, perplexity and token accuracy on assistant tokens of `examples`; chrF and exact match of greedy generations."""
    import torch

    from ft_pipeline.training.data import IGNORE, collate
    from ft_pipeline.training.serving import complete

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    losses: dict[int, float] = {}
    total_nll = total_tokens = total_correct = 0.0
    # length-sorted batches waste little on padding; results are keyed back to the example's position
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            batch = collate([examples[i] for i in idx], pad_id)
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"][:, 1:].to(device)
            logits = logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
            mask = labels != IGNORE
            correct = ((logits.argmax(-1) == labels) & mask).sum(1)
            for j, i in enumerate(idx):
                n = int(mask[j].sum())
                losses[i] = float(nll[j].sum()) / n
                total_nll += float(nll[j].sum())
                total_tokens += n
                total_correct += int(correct[j])
    loss = total_nll / total_tokens
    generations = []
    for row in gen_rows:
        reference = row["messages"][-1]["content"]
        text = complete(model, tokenizer, row["messages"][:-1], settings.eval_max_new_tokens, device)
        short = len(reference.split()) <= SHORT_ANSWER_WORDS
        generations.append(
            {
                "id": row["id"],
                "text": text,
                "chrf": chrf(text, reference),
                "exact_match": exact_match(text, reference) if short else None,
            }
        )
    short_matches = [g["exact_match"] for g in generations if g["exact_match"] is not None]
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": total_correct / total_tokens,
        "losses": [losses[i] for i in range(len(examples))],
        "chrf": sum(g["chrf"] for g in generations) / len(generations) if generations else None,
        "exact_match": sum(short_matches) / len(short_matches) if short_matches else None,
        "n_exact_match": len(short_matches),
        "generations": generations,
    }


def evaluate_candidate(
    settings: Any, task: str, version: int | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Score a task's adapter (default: the latest) against the base model and the champion on the test split, and
    record the scores, the gate's verdicts and the decision; the alias is moved by the promotion step, not here."""
    import torch
    from peft import PeftModel

    from ft_pipeline.training.base_model import (
        BaseModelMismatch,
        base_identity,
        check_adapter_base,
        ensure_base_model,
        load_base_model,
        release_base,
    )
    from ft_pipeline.training.champion import current_champion
    from ft_pipeline.training.data import encode_all
    from ft_pipeline.training.lora import resolve_device

    task = checked_model_key(task)
    parent, segment = split_model_key(task)
    versions = adapter_versions(settings.adapters_dir, task)
    if version is None:
        if not versions:
            raise LookupError(f"task {task!r} has no adapter to evaluate under {settings.adapters_dir}")
        version = versions[-1]
    candidate_config = read_adapter_config(settings.adapters_dir, task, version)
    source = ensure_base_model(settings)
    identity = base_identity(settings, source)
    check_adapter_base(candidate_config, identity, f"candidate {task} v{version}")
    # the test split only: dev chose the candidate's checkpoint, so it cannot also judge it
    test_file = dataset_dir(settings.datasets_dir, task) / "test.jsonl"
    rows = read_jsonl(test_file)
    champion = current_champion(settings, task)
    rival = champion if champion is not None and champion != version else None
    rival_note = None
    if rival is not None:
        try:
            check_adapter_base(read_adapter_config(settings.adapters_dir, task, rival), identity, f"champion v{rival}")
        except BaseModelMismatch:
            # a LoRA adapter only means something on the base it was trained on: the old champion cannot be scored here
            rival_note = f"champion v{rival} was trained on another base model and is not compared"
            rival = None
    # a segment must also beat what serves it today: its task's champion, judged on the segment's own test split
    task_rival = current_champion(settings, parent) if segment is not None else None
    if task_rival is not None:
        try:
            check_adapter_base(
                read_adapter_config(settings.adapters_dir, parent, task_rival), identity, f"{parent} v{task_rival}"
            )
        except BaseModelMismatch:
            rival_note = f"task champion {parent} v{task_rival} was trained on another base model and is not compared"
            task_rival = None

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    model, tokenizer = load_base_model(settings, device=device, source=source)
    examples, dropped = encode_all(tokenizer, rows, settings.max_seq_len)
    if not examples:
        raise ValueError(f"task {task!r} has no test example with an assistant turn in {test_file}")
    kept_ids = {e.id for e in examples}
    gen_rows = generation_sample([r for r in rows if str(r.get("id", "")) in kept_ids], settings.eval_generation_samples)
    log(f"evaluating {task} v{version} on {len(examples)} test examples ({dropped} dropped), {len(gen_rows)} generations")

    scores = {"base": score_model(model, tokenizer, examples, gen_rows, settings, device)}
    model = PeftModel.from_pretrained(model, str(adapter_dir(settings.adapters_dir, task, version)), adapter_name="candidate")
    try:
        scores["candidate"] = score_model(model, tokenizer, examples, gen_rows, settings, device)
        tests = {"vs_base": paired_test(scores["candidate"]["losses"], scores["base"]["losses"])}
        rivals = [("champion", task, rival), ("task_champion", parent, task_rival)]
        for name, owner, rival_version in rivals:
            if rival_version is None:
                continue
            model.load_adapter(str(adapter_dir(settings.adapters_dir, owner, rival_version)), adapter_name=name)
            model.set_adapter(name)
            scores[name] = score_model(model, tokenizer, examples, gen_rows, settings, device)
            tests[f"vs_{name}"] = paired_test(scores["candidate"]["losses"], scores[name]["losses"])
    finally:
        release_base(model)

    verdicts = gate(scores, tests, settings.promotion_p_value, settings.generation_tolerance)
    promoted, reasons = decide(scores, tests, settings.promotion_p_value, settings.generation_tolerance)
    if rival_note:
        reasons.append(rival_note)
    if promoted and champion == version:
        reasons.append(f"v{version} already is the champion")
    result = {
        "task": task,
        "version": int(version),
        "evaluated_at": datetime.now(UTC).isoformat(),
        "split": "test",
        "dataset_version": candidate_config.get("dataset_version"),
        "base_model": candidate_config.get("base_model"),
        "base_identity": identity,
        "champion_before": champion,
        "champion_compared": rival,
        "task_champion_compared": {"task": parent, "version": task_rival} if task_rival is not None else None,
        "example_ids": [e.id for e in examples],
        "n_examples": len(examples),
        "n_dropped": dropped,
        "scores": scores,
        "tests": tests,
        "gate": verdicts,
        "p_threshold": settings.promotion_p_value,
        "generation_tolerance": settings.generation_tolerance,
        "decision": "promote" if promoted else "keep",
        "reasons": reasons,
    }
    path = write_json_atomic(result, evaluation_path(settings, task, version))
    record_in_mlflow(settings, task, result, candidate_config.get("mlflow_run_id"), path)
    log(f"{task} v{version}: {result['decision']}: " + "; ".join(reasons))
    return result


def summary_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The evaluation's numbers as flat metrics (loss, chrF, p-values, effect sizes) for MLflow and Dagster."""
    metrics: dict[str, float] = {}
    for who, prefix in (
        ("candidate", "eval"),
        ("base", "base_eval"),
        ("champion", "champion_eval"),
        ("task_champion", "task_champion_eval"),
    ):
        score = result["scores"].get(who)
        if score is None:
            continue
        for key in ("loss", "perplexity", "token_accuracy", "chrf", "exact_match"):
            if score.get(key) is not None:
                metrics[f"{prefix}_{key}"] = float(score[key])
    for name, test in result["tests"].items():
        metrics[f"p_value_{name}"] = test["p_value"]
        metrics[f"rank_biserial_{name}"] = test["rank_biserial"]
        metrics[f"median_loss_difference_{name}"] = test["median_difference"]
    metrics["decided_promote"] = float(result["decision"] == "promote")
    metrics["n_eval_examples"] = float(result["n_examples"])
    return metrics


def record_in_mlflow(settings: Any, task: str, result: dict[str, Any], run_id: str | None, path: Path) -> None:
    """Metrics and the evaluation file on the adapter's training run; the decision as tags on its model version."""
    from ft_pipeline.training.tracking import client as mlflow_client
    from ft_pipeline.training.tracking import registered_model_name

    client = mlflow_client(settings)
    if run_id:
        for key, value in summary_metrics(result).items():
            client.log_metric(run_id, key, value)
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    name, version = registered_model_name(task), str(result["version"])
    client.set_model_version_tag(name, version, "promotion_decision", result["decision"])
    # model version tag values are size-limited; the full reasons live in the evaluation file
    client.set_model_version_tag(name, version, "promotion_reasons", "; ".join(result["reasons"])[:4000])
    client.set_model_version_tag(name, version, "eval_p_value_vs_base", f"{result['tests']['vs_base']['p_value']:.4g}")


def latest_evaluation(settings: Any, task: str) -> dict[str, Any] | None:
    """The evaluation of the task's newest adapter, or None when it has no adapter or that one was not evaluated."""
    versions = adapter_versions(settings.adapters_dir, task)
    return read_evaluation(settings, task, versions[-1]) if versions else None

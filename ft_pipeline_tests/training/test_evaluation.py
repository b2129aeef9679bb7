"""Tests of the evaluation metrics, the significance test, the gate, a full evaluation on the test split and the promotion step."""

import json

import pytest

from ft_pipeline.training.base_model import BaseModelMismatch
from ft_pipeline.training.champion import champion_history, current_champion, promote_evaluated
from ft_pipeline.training.evaluation import chrf, decide, evaluate_candidate, exact_match, gate, paired_test
from ft_pipeline.training.tracking import client, registered_model_name
from ft_pipeline_tests.evaluation_fixtures import TEST_NAMES, build_tiny_base, evaluation, tiny_settings, train_adapter


def test_chrf_identical_is_100_and_disjoint_is_0():
    assert chrf("the cat sat", "the cat sat") == pytest.approx(100.0)
    assert chrf("xyz", "abc") == 0.0
    assert chrf("", "") == 100.0
    assert chrf("", "abc") == 0.0


def test_chrf_ignores_whitespace_and_weights_recall():
    assert chrf("thecat sat", "the cat sat") == pytest.approx(100.0)
    # "ab" against "abcd": unigram P=1 R=0.5, bigram P=1 R=1/3; averaged P=1, R=5/12; F2 = 5PR / (4P + R)
    p, r = 1.0, 5 / 12
    assert chrf("ab", "abcd") == pytest.approx(100 * 5 * p * r / (4 * p + r))
    # beta=2 favours recall: missing half of the reference costs more than adding as much again
    assert chrf("abcdefghijkl", "abcdef") > chrf("abc", "abcdef")


def test_exact_match_normalises_case_and_spaces():
    assert exact_match("  Yes ", "yes")
    assert not exact_match("yes.", "yes")


def test_paired_test_detects_lower_candidate_losses():
    base = [2.0 + 0.1 * i for i in range(12)]
    better = [b - 0.5 - 0.01 * i for i, b in enumerate(base)]
    result = paired_test(better, base)
    assert result["p_value"] < 0.001
    assert result["rank_biserial"] == 1.0
    assert result["median_difference"] < 0
    assert result["n_better"] == 12


def test_paired_test_does_not_reward_higher_or_equal_losses():
    base = [2.0 + 0.1 * i for i in range(12)]
    assert paired_test([b + 0.3 for b in base], base)["p_value"] > 0.99
    same = paired_test(base, base)
    assert same["p_value"] == 1.0 and same["rank_biserial"] == 0.0
    mixed = paired_test([b + (0.2 if i % 2 else -0.2) for i, b in enumerate(base)], base)
    assert 0.05 < mixed["p_value"] < 0.95


def _scores(candidate_chrf, champion_chrf=None):
    scores = {"candidate": {"chrf": candidate_chrf}, "base": {"chrf": 10.0}}
    if champion_chrf is not None:
        scores["champion"] = {"chrf": champion_chrf}
    return scores


def _test(p):
    return {"p_value": p, "median_difference": -0.1}


def test_decide_first_adapter_needs_only_to_beat_the_base():
    promote, reasons = decide(_scores(40.0), {"vs_base": _test(0.001)}, 0.05, 0.0)
    assert promote and any("beating the base model is enough" in r for r in reasons)
    promote, reasons = decide(_scores(40.0), {"vs_base": _test(0.2)}, 0.05, 0.0)
    assert not promote and any("does not beat the base" in r for r in reasons)


def test_decide_against_a_champion_needs_loss_and_generation_quality():
    tests = {"vs_base": _test(0.001), "vs_champion": _test(0.01)}
    assert decide(_scores(40.0, 41.0), tests, 0.05, 2.0)[0]
    promote, reasons = decide(_scores(40.0, 41.0), tests, 0.05, 0.0)
    assert not promote and any("generations worse" in r for r in reasons)
    promote, reasons = decide(_scores(45.0, 41.0), {"vs_base": _test(0.001), "vs_champion": _test(0.3)}, 0.05, 0.0)
    assert not promote and any("does not beat the champion" in r for r in reasons)


def test_gate_gives_one_verdict_per_rival():
    verdicts = gate(_scores(40.0), {"vs_base": _test(0.2)}, 0.05, 0.0)
    assert verdicts["beats_base"]["passed"] is False and verdicts["beats_champion"] is None
    verdicts = gate(_scores(40.0, 45.0), {"vs_base": _test(0.001), "vs_champion": _test(0.01)}, 0.05, 0.0)
    assert verdicts["beats_base"]["passed"] and not verdicts["beats_champion"]["passed"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """A tiny random base model and one data dir (and MLflow store) for the module; each test uses its own task."""
    import torch

    torch.set_num_threads(1)
    base = build_tiny_base(tmp_path_factory.mktemp("base"))
    return tiny_settings(tmp_path_factory.mktemp("data"), base)


def evaluate_and_promote(settings, task):
    """The evaluation of the task's newest adapter, then the promotion step; returns both results."""
    return evaluate_candidate(settings, task, log=lambda _: None), promote_evaluated(settings, task, log=lambda _: None)


def test_trained_adapter_is_promoted_a_worse_one_kept_a_better_one_promoted(settings):
    task = "gate"
    v1 = train_adapter(settings, task, steps=15)
    first = evaluate_candidate(settings, task, log=lambda _: None)
    assert first["decision"] == "promote" and first["split"] == "test"
    assert first["scores"]["candidate"]["loss"] < first["scores"]["base"]["loss"]
    assert first["tests"]["vs_base"]["p_value"] < settings.promotion_p_value
    # evaluation only records: the alias moves in the promotion step
    assert "champion" not in first["scores"] and current_champion(settings, task) is None
    assert promote_evaluated(settings, task, log=lambda _: None)["promoted"] and current_champion(settings, task) == v1

    stored = evaluation(settings, task, v1)
    assert stored["example_ids"] == [f"x-{n}" for n in TEST_NAMES]
    assert all(len(stored["scores"][who]["losses"]) == len(TEST_NAMES) for who in ("candidate", "base"))
    assert len(stored["scores"]["candidate"]["generations"]) == settings.eval_generation_samples
    mlflow = client(settings)
    run_id = json.loads((settings.adapters_dir / task / str(v1) / "training_config.json").read_text())["mlflow_run_id"]
    assert mlflow.get_run(run_id).data.metrics["eval_loss"] == pytest.approx(first["scores"]["candidate"]["loss"])
    assert mlflow.get_model_version(registered_model_name(task), str(v1)).tags["promotion_decision"] == "promote"

    # trained to say "Goodbye" while validation says "Hello": not better than the champion, which stays
    v2 = train_adapter(settings, task, word="Goodbye", steps=30)
    second, step = evaluate_and_promote(settings, task)
    assert second["decision"] == "keep" and second["champion_compared"] == v1 and not step["promoted"]
    assert second["gate"]["beats_champion"]["passed"] is False
    assert second["tests"]["vs_champion"]["p_value"] >= settings.promotion_p_value
    assert second["scores"]["champion"]["losses"] == pytest.approx(first["scores"]["candidate"]["losses"])
    assert current_champion(settings, task) == v1
    assert mlflow.get_model_version(registered_model_name(task), str(v2)).tags["promotion_decision"] == "keep"

    v3 = train_adapter(settings, task, steps=60)
    third, step = evaluate_and_promote(settings, task)
    assert third["decision"] == "promote", third["reasons"]
    assert step["promoted"] and (step["champion_before"], step["champion_after"]) == (v1, v3)
    assert third["tests"]["vs_champion"]["p_value"] < settings.promotion_p_value
    assert current_champion(settings, task) == v3
    assert [(h["from"], h["to"]) for h in champion_history(settings, task)] == [(None, v1), (v1, v3)]


def test_untrained_adapter_is_not_promoted(settings):
    task = "untrained"
    version = train_adapter(settings, task, steps=0)
    result, step = evaluate_and_promote(settings, task)
    assert result["decision"] == "keep" and result["gate"]["beats_base"]["passed"] is False
    assert result["tests"]["vs_base"]["p_value"] == 1.0
    assert not step["promoted"] and step["reason"].startswith(f"v{version} is kept out")
    assert current_champion(settings, task) is None and evaluation(settings, task, version)["decision"] == "keep"


def test_dry_run_records_the_decision_without_moving_the_alias(settings):
    task = "dry"
    dry = settings.replace(dry_run=True)
    version = train_adapter(dry, task, steps=15)
    result, step = evaluate_and_promote(dry, task)
    assert result["decision"] == "promote" and step["dry_run"] and not step["promoted"]
    assert "dry run" in step["reason"]
    assert current_champion(settings, task) is None and champion_history(settings, task) == []
    tags = client(settings).get_model_version(registered_model_name(task), str(version)).tags
    assert tags["promotion_decision"] == "promote"
    # the same evaluation, promoted once the dry run is over
    assert promote_evaluated(settings, task, log=lambda _: None)["promoted"] and current_champion(settings, task) == version


def test_an_adapter_refuses_a_foreign_base(settings, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ft_pipeline.training.serving import generate

    task = "pinned"
    version = train_adapter(settings, task, steps=15)
    evaluate_and_promote(settings, task)
    assert current_champion(settings, task) == version
    # the same architecture and tokenizer, other weights: another base for the adapter
    other = build_tiny_base(tmp_path / "other")
    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(other)
    foreign = settings.replace(base_model=str(other))
    with pytest.raises(BaseModelMismatch, match=f"candidate {task} v{version} was trained on base"):
        evaluate_candidate(foreign, task, log=lambda _: None)
    with pytest.raises(BaseModelMismatch, match=f"champion {task} v{version} was trained on base"):
        generate(foreign, task, "Greet anna.", max_new_tokens=4)
    # builtin knobs whose base was never built cannot be the champion's base: refused before anything is built
    builtin = settings.replace(base_model="builtin")
    with pytest.raises(BaseModelMismatch, match="is not built"):
        generate(builtin, task, "Greet anna.", max_new_tokens=4)
    assert not (settings.models_dir / "base").exists()
    assert generate(settings, task, "Greet anna.", max_new_tokens=4) is not None

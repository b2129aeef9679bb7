"""The GSM8K fixture maps OpenAI's published model solutions onto valid contract records with the true rates."""

from collections import Counter

import pytest

from ft_pipeline.core.schema import validate_record
from ft_pipeline_tests.gsm8k import MODELS, gsm8k_records

# from ../shared/data/gsm8k/README.md, computed by the file's publishers' is_correct flags
TRUE_ACCEPTANCE = {"6b_finetuning": 21.68, "6b_verification": 39.04, "175b_finetuning": 34.72, "175b_verification": 56.25}


@pytest.fixture(scope="module")
def records():
    return gsm8k_records()


def test_one_record_per_question_and_model(records):
    assert len(records) == 5276
    assert Counter(r["agent"] for r in records) == {model: 1319 for model in MODELS}
    assert len({r["log_id"] for r in records}) == 5276
    assert {r["task"] for r in records} == {"math_qa"}


def test_acceptance_rates_are_the_published_ones(records):
    for model, rate in TRUE_ACCEPTANCE.items():
        mine = [r for r in records if r["agent"] == model]
        accepted = sum(r["decision"] == "accepted" for r in mine)
        assert round(100 * accepted / len(mine), 2) == rate, model


def test_edited_records_carry_the_human_reference(records):
    edited = [r for r in records if r["decision"] == "edited"]
    assert edited and all(r["final_output"].rstrip().split("\n")[-1].startswith("A: ") for r in edited)
    assert all("final_output" not in r for r in records if r["decision"] == "accepted")


def test_every_record_is_valid_and_the_mapping_is_deterministic(records):
    assert [problems for problems in map(validate_record, records) if problems] == []
    assert gsm8k_records() == records
    days = {r["timestamp"][:10] for r in records}
    assert len(days) == 14

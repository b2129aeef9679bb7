"""Tests of answering prompts with a task's champion adapter."""

import pytest

from ft_pipeline.training.champion import promote
from ft_pipeline.training.serving import generate
from ft_pipeline_tests.evaluation_fixtures import build_tiny_base, tiny_settings, train_adapter


@pytest.fixture
def settings(tmp_path):
    """A tiny random base model and a data dir."""
    import torch

    torch.set_num_threads(1)
    return tiny_settings(tmp_path / "data", build_tiny_base(tmp_path / "base"))


def test_generate_answers_with_the_champion_and_the_base_model_before_one(settings):
    before = generate(settings, "greet", "Greet anna.", max_new_tokens=8)
    version = train_adapter(settings, "greet", steps=60)
    assert generate(settings, "greet", "Greet anna.", max_new_tokens=8) == before
    promote(settings, "greet", version, "test")
    after = generate(settings, "greet", "Greet anna.", max_new_tokens=8)
    assert after != before and after.startswith("Hello") and "welcome" in after

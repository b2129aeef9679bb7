import dataclasses
from pathlib import Path

import pytest

from ft_pipeline.resources import PipelineResource, stage_config
from ft_pipeline.settings import Settings, knobs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_run_on_a_laptop():
    settings = Settings.from_env(env={})
    assert settings.data_dir == "./data"
    assert settings.base_model == "builtin"
    assert settings.tracking_uri.startswith("sqlite:///") and settings.tracking_uri.endswith("mlflow/mlflow.db")


def test_environment_variables_are_parsed_by_type():
    env = {
        "FT_DATA_DIR": "/srv/ft",
        "FT_MIN_QUALITY_SCORE": "none",
        "FT_MIN_CONFIDENCE": "0.5",
        "FT_MIN_TRAIN_EXAMPLES": "10",
        "FT_DRY_RUN": "true",
        "FT_DEFAULT_SYSTEM_PROMPTS": '{"sql_generation": "You write SQL."}',
    }
    settings = Settings.from_env(env=env)
    assert settings.root == Path("/srv/ft")
    assert settings.min_quality_score is None
    assert settings.min_confidence == 0.5
    assert settings.min_train_examples == 10
    assert settings.dry_run is True
    assert settings.default_system_prompts == {"sql_generation": "You write SQL."}


@pytest.mark.parametrize(
    "name, value", [("FT_MIN_TRAIN_EXAMPLES", "many"), ("FT_DRY_RUN", "maybe"), ("FT_DEFAULT_SYSTEM_PROMPTS", "[1]")]
)
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env(env={name: value})


def test_run_config_overrides_environment_and_resource(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_MIN_CONFIDENCE", "0.9")
    config_class = stage_config("settlements", "SettlementsConfigForTest")
    assert set(config_class.model_fields) == {f.name for f in knobs() if f.metadata["stage"] == "settlements"}
    settings = PipelineResource(data_dir=str(tmp_path)).settings(config_class(min_quality_score=5.0))
    assert settings.root == tmp_path
    assert settings.min_quality_score == 5.0
    assert settings.min_confidence == 0.9


def test_every_knob_is_documented_in_the_readme():
    text = README.read_text(encoding="utf-8")
    missing = [f.metadata["env"] for f in knobs() if f"`{f.metadata['env']}`" not in text]
    assert missing == []


def test_every_knob_has_help_and_a_known_stage():
    stages = {
        "general",
        "settlements",
        "report",
        "dataset",
        "model",
        "training",
        "evaluation",
        "promotion",
        "automation",
        "serve",
    }
    for f in dataclasses.fields(Settings):
        assert f.metadata["help"] and f.metadata["stage"] in stages

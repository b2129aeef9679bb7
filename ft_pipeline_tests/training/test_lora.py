"""LoRA training: what moves, what is learned, seeding, early stopping, resume after a crash, lineage and MLflow."""

import json

import pytest
import torch

from ft_pipeline.core.io import write_json_atomic
from ft_pipeline.core.lineage import adapter_dir, read_adapter_config
from ft_pipeline.training.data import collate, encode_all
from ft_pipeline.training.lora import (
    HYPERPARAMETERS,
    evaluate_loss,
    example_losses,
    fit,
    main,
    target_modules,
    train_task,
    wrap_lora,
)
from ft_pipeline_tests.evaluation_fixtures import DEV_NAMES, TASK, TEST_NAMES, TRAIN_NAMES, chat, tiny_settings, write_dataset

STEPS = 12


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    torch.set_num_threads(1)
    return tiny_model_dir


def _settings(data_dir, base, **overrides):
    return tiny_settings(data_dir, base, **{"max_steps": STEPS, "eval_every": 4, "checkpoint_every": 4, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base):
    """One uninterrupted training run of the greeting task, with its log lines."""
    settings = _settings(tmp_path_factory.mktemp("data"), base)
    write_dataset(settings)
    write_json_atomic({"valid": True, "problems": []}, settings.datasets_dir / TASK / "validation.json")
    logs = []
    result = train_task(settings, TASK, log=logs.append, tags={"dagster_run_id": "run-1", "partition": TASK})
    return settings, result, logs


def _model_and_data(settings, train_rows, dev_rows):
    from ft_pipeline.training.base_model import load_base_model

    model, tokenizer = load_base_model(settings)
    torch.manual_seed(settings.seed)
    model = wrap_lora(model, settings)
    train, _ = encode_all(tokenizer, train_rows, settings.max_seq_len)
    dev, _ = encode_all(tokenizer, dev_rows, settings.max_seq_len)
    return model, tokenizer, train, dev


def _rows(names, word="Hello", weight=1.0):
    return [{"messages": chat(n, word), "weight": weight, "id": f"{word}-{n}"} for n in names]


def _lora_weights(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_lora_weights_move_and_base_weights_do_not(tmp_path, base):
    settings = _settings(tmp_path, base)
    model, tokenizer, train, val = _model_and_data(settings, _rows(TRAIN_NAMES), _rows(DEV_NAMES))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    fit(model, train, val, settings, pad_id=tokenizer.pad_token_id, log=lambda _: None)
    after = dict(model.named_parameters())
    lora = [k for k in before if "lora_" in k]
    assert lora and all(after[k].requires_grad for k in lora)
    assert all(not torch.equal(before[k], after[k]) for k in lora if "lora_B" in k)
    assert all(torch.equal(before[k], after[k]) for k in before if "lora_" not in k)


def test_adapter_reloads_with_identical_logits(tmp_path, base):
    from peft import PeftModel

    from ft_pipeline.training.base_model import load_base_model

    settings = _settings(tmp_path, base, max_steps=4)
    model, tokenizer, train, val = _model_and_data(settings, _rows(TRAIN_NAMES), _rows(DEV_NAMES))
    fit(model, train, val, settings, pad_id=tokenizer.pad_token_id, log=lambda _: None)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_base_model(settings)[0], str(tmp_path / "adapter"))
    batch = collate(val, tokenizer.pad_token_id)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        actual = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(expected, actual)


def test_loss_on_assistant_positions_only_matches_the_full_forward(tmp_path, base):
    settings = _settings(tmp_path, base)
    model, tokenizer, train, _ = _model_and_data(settings, _rows(TRAIN_NAMES[:4]), [])
    model.eval()
    batch = collate(train, tokenizer.pad_token_id)
    with torch.no_grad():
        fast = example_losses(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        full = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        expected = full.sum(1) / (targets != -100).sum(1)
    torch.testing.assert_close(fast, expected)


def _greetings(names, word, weight=1.0):
    """Chats whose whole answer is the greeting word: the word is what the loss measures."""
    return [
        {"messages": [{"role": "user", "content": f"Greet {n}."}, {"role": "assistant", "content": f"{word}!"}], "weight": weight}
        for n in names
    ]


def test_example_weights_decide_what_is_learned(tmp_path, base):
    # The same examples trained three times: "Hello" answers weigh 1, the "Goodbye" ones 0, 1 or 3. The margin is how
    # much likelier "Goodbye" answers are than "Hello" ones afterwards. The runs are each other's control: a larger
    # weight must give a clearly larger margin, whatever the CPU's float kernels make of the absolute values.
    settings = _settings(tmp_path, base, max_steps=20, eval_every=100, learning_rate=1e-2)
    margins = {}
    for weight in (0.0, 1.0, 3.0):
        rows = _greetings(TRAIN_NAMES[:13], "Hello") + _greetings(TRAIN_NAMES[13:], "Goodbye", weight)
        model, tokenizer, train, _ = _model_and_data(settings, rows, [])
        fit(model, train, [], settings, pad_id=tokenizer.pad_token_id, log=lambda _: None)
        loss = {
            word: evaluate_loss(
                model, encode_all(tokenizer, _greetings(TEST_NAMES, word), 64)[0], 8, tokenizer.pad_token_id, "cpu"
            )
            for word in ("Hello", "Goodbye")
        }
        margins[weight] = loss["Hello"] - loss["Goodbye"]
    # measured gaps are about 0.5 and 0.16; float kernels move them by orders of magnitude less
    assert margins[0.0] + 0.2 < margins[1.0] and margins[1.0] + 0.05 < margins[3.0], margins


def test_early_stopping_keeps_the_best_weights(tmp_path, base):
    # Trained on "Goodbye" greetings, dev split of "Hello" ones: the dev loss turns up once "Goodbye" is learned.
    settings = _settings(tmp_path, base, max_steps=60, eval_every=2, early_stopping_patience=2, learning_rate=3e-2)
    model, tokenizer, train, dev = _model_and_data(settings, _rows(TRAIN_NAMES, "Goodbye"), _rows(DEV_NAMES))
    logs = []
    result = fit(model, train, dev, settings, pad_id=tokenizer.pad_token_id, log=logs.append)
    assert result.stopped_early and result.steps < 60
    assert any(line.startswith("early stop") for line in logs)
    assert result.best_dev_loss == min(loss for _, loss in result.dev_loss)
    assert evaluate_loss(model, dev, settings.batch_size, tokenizer.pad_token_id, "cpu") == result.best_dev_loss


def test_dev_loss_falls_and_progress_is_logged(trained):
    _, result, logs = trained
    assert result.metrics["best_dev_loss"] < result.metrics["initial_dev_loss"]
    assert result.metrics["steps"] == STEPS and result.metrics["tokens_per_s"] > 0
    assert any(line.startswith(f"step {STEPS}/{STEPS} loss") and "tokens/s" in line and "eta" in line for line in logs)


def test_adapter_folder_holds_the_training_config_and_lineage(trained, base):
    from peft import PeftModel

    from ft_pipeline.training.base_model import base_identity, load_base_model

    settings, result, _ = trained
    assert result.version == 1 and result.adapter_dir == adapter_dir(settings.adapters_dir, TASK, 1)
    config = read_adapter_config(settings.adapters_dir, TASK, 1)
    assert {name: config[name] for name in HYPERPARAMETERS} == {name: getattr(settings, name) for name in HYPERPARAMETERS}
    assert config["base_model"] == str(base) and config["dataset_version"] == "hello-v1"
    assert config["data_watermark"] == "2024-01-01T00:00:00+00:00" and config["n_train"] == len(TRAIN_NAMES)
    assert config["mlflow_run_id"] == result.run_id and config["version"] == 1 and config["trained_at"]
    assert config["base_identity"] == base_identity(settings) and config["base_hash"] == config["base_identity"]["hash"]
    assert config["dagster_run_id"] == "run-1" and config["n_dev"] == len(DEV_NAMES) and config["n_test"] == len(TEST_NAMES)
    assert not list((settings.adapters_dir / TASK).glob(".staging-*"))
    assert not (settings.root / "checkpoints" / TASK / "hello-v1").exists()
    PeftModel.from_pretrained(load_base_model(settings)[0], str(result.adapter_dir))


def test_mlflow_run_metrics_artifacts_and_registered_version(trained, base):
    from mlflow.tracking import MlflowClient

    settings, result, _ = trained
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lora_r"] == "8" and run.data.params["dataset_version"] == "hello-v1"
    assert run.data.params["base_model"] == str(base) and run.data.params["n_train"] == str(len(TRAIN_NAMES))
    assert run.data.tags["dagster_run_id"] == "run-1" and run.data.tags["partition"] == TASK
    assert [m.step for m in client.get_metric_history(result.run_id, "train_loss")] == list(range(1, STEPS + 1))
    assert [m.step for m in client.get_metric_history(result.run_id, "dev_loss")] == [0, 4, 8, 12]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for folder in ("adapter", "dataset") for a in client.list_artifacts(result.run_id, folder)
    }
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/training_config.json",
        "validation.json",
        "training_config.json",
        "dataset/train.jsonl",
        "dataset/dev.jsonl",
        "dataset/test.jsonl",
        "dataset/manifest.json",
    } <= artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == f"ft_pipeline/{TASK}"
    assert experiment.artifact_location == (settings.artifact_root / TASK).as_uri()
    version = client.get_model_version(f"ft_pipeline.{TASK}", "1")
    # the version is the run's pyfunc model of the adapter (see test_pyfunc.py); the adapter files stay run artifacts
    (output,) = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert version.run_id == result.run_id == logged.source_run_id and version.source == logged.artifact_location
    assert version.tags["dataset_version"] == "hello-v1" and version.tags["mlflow_run_id"] == result.run_id
    assert version.tags["base_model"] == str(base) and version.tags["base_hash"] == run.data.params["base_hash"]


def test_resume_after_a_crash_matches_the_uninterrupted_run(tmp_path, trained, base):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    settings = _settings(tmp_path, base)
    write_dataset(settings)

    def crash_at_step_6(line):
        if line.startswith(f"step 6/{STEPS} loss"):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_task(settings, TASK, log=crash_at_step_6)
    assert (settings.root / "checkpoints" / TASK / "hello-v1" / "checkpoint.pt").is_file()
    logs = []
    resumed = train_task(settings, TASK, log=logs.append)
    assert resumed.metrics["resumed_from_step"] == 4 and "resumed from checkpoint at step 4" in logs

    expected = load_file(trained[1].adapter_dir / "adapter_model.safetensors")
    actual = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.metrics["best_dev_loss"] == trained[1].metrics["best_dev_loss"]

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(f"ft_pipeline/{TASK}").experiment_id])
    assert [r.info.run_id for r in runs] == [resumed.run_id]
    assert [m.step for m in client.get_metric_history(resumed.run_id, "train_loss")] == list(range(1, STEPS + 1))


def test_refuses_a_dataset_its_validation_marks_invalid(tmp_path, base):
    settings = _settings(tmp_path, base)
    write_dataset(settings)
    report = {"valid": False, "problems": ["3 training examples, fewer than the 50 required"]}
    write_json_atomic(report, settings.datasets_dir / TASK / "validation.json")
    with pytest.raises(ValueError, match="fewer than the 50 required"):
        train_task(settings, TASK, log=lambda _: None)


def test_target_modules_per_architecture(base):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    llama = AutoModelForCausalLM.from_pretrained(base)
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert target_modules(llama) == projections
    assert target_modules(llama, "q_proj, v_proj") == ["q_proj", "v_proj"]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    assert target_modules(gpt2) == ["c_attn", "c_proj", "c_fc"]
    llama.config.model_type = "unknown"
    assert target_modules(llama) == sorted(projections)


def test_cli_trains_a_task(tmp_path, base, monkeypatch, capsys):
    settings = _settings(tmp_path, base)
    write_dataset(settings)
    for env, value in {"FT_BASE_MODEL": str(base), "FT_DEVICE": "cpu", "FT_TORCH_THREADS": "1", "FT_LORA_DROPOUT": "0"}.items():
        monkeypatch.setenv(env, value)
    assert main(["--task", TASK, "--data-dir", str(tmp_path), "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex("\n{\n") + 1 :])
    assert summary["version"] == 1 and summary["steps"] == 2
    assert read_adapter_config(settings.adapters_dir, TASK, 1)["max_steps"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_trains_on_the_gpu(tmp_path, base):
    settings = _settings(tmp_path, base, device="cuda", max_steps=4)
    write_dataset(settings)
    result = train_task(settings, TASK, log=lambda _: None)
    assert read_adapter_config(settings.adapters_dir, TASK, result.version)["device"] == "cuda"


def test_the_same_data_and_settings_are_not_trained_twice(trained):
    settings, first, _ = trained
    logs = []
    again = train_task(settings, TASK, log=logs.append)
    assert again.version == first.version and again.run_id == first.run_id
    assert again.metrics["retrained"] is False and any("not retraining" in line for line in logs)
    changed = train_task(settings.replace(seed=settings.seed + 1), TASK, log=lambda _: None)
    assert changed.version == first.version + 1 and changed.metrics["retrained"] is True


def test_lineage_names_the_data_base_and_runs_and_lists_the_trained_ids(trained, capsys):
    from ft_pipeline.cli import main as cli

    settings, result, _ = trained
    assert cli(["--data-dir", str(settings.root), "lineage", TASK, "1"]) == 0
    out = capsys.readouterr().out
    assert "dataset version:  hello-v1" in out and "data watermark:   2024-01-01T00:00:00+00:00" in out
    assert f"log ids:          train {len(TRAIN_NAMES)}, dev {len(DEV_NAMES)}, test {len(TEST_NAMES)}" in out
    assert f"MLflow run:       {result.run_id}" in out and "Dagster run:      run-1" in out
    assert read_adapter_config(settings.adapters_dir, TASK, 1)["base_identity"]["hash"][:12] in out
    assert cli(["--data-dir", str(settings.root), "lineage", TASK, "--ids"]) == 0
    assert capsys.readouterr().out.split() == [f"t-{n}" for n in TRAIN_NAMES]
    assert cli(["--data-dir", str(settings.root), "lineage", TASK, "1", "--ids", "--split", "test"]) == 0
    assert capsys.readouterr().out.split() == [f"x-{n}" for n in TEST_NAMES]
    assert cli(["--data-dir", str(settings.root), "lineage", TASK, "7"]) == 2
    assert "has no adapter v7" in capsys.readouterr().err

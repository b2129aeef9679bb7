"""Exports of an adapter: a merged model with the logits of base+adapter, an Ollama Modelfile, a vLLM LoRA module."""

import json

import pytest
import torch

from ft_pipeline.cli import main
from ft_pipeline.training.champion import promote
from ft_pipeline.training.export import chat_format
from ft_pipeline_tests.evaluation_fixtures import build_tiny_base, tiny_settings, train_adapter

PROMPTS = ["Greet anna.", "Greet Alice, please.", "Where is order 7?"]
SYSTEM = "Greet people warmly."


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A task `greet` with a trained champion and a system prompt, and the arguments that point the CLI at it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    settings = tiny_settings(root / "data", build_tiny_base(root / "base"), default_system_prompts={"greet": SYSTEM})
    promote(settings, "greet", train_adapter(settings, "greet", word="Goodbye"), "for the export test")
    return settings


def export(settings, tmp_path, fmt, *extra, out="out"):
    target = tmp_path / out
    code = main(["--data-dir", str(settings.root), "export", "greet", "--format", fmt, "--out", str(target), *extra])
    return code, target


@pytest.fixture(autouse=True)
def same_knobs(trained, monkeypatch):
    """The CLI reads its knobs from the environment: the ones the adapter was trained with."""
    monkeypatch.setenv("FT_BASE_MODEL", trained.base_model)
    monkeypatch.setenv("FT_DEFAULT_SYSTEM_PROMPTS", json.dumps({"greet": SYSTEM}))


def test_merged_model_loads_in_plain_transformers_with_the_logits_of_base_and_adapter(trained, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, out = export(trained, tmp_path, "merged")
    assert code == 0 and "greet v1 exported as merged" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(trained.base_model), str(trained.adapters_dir / "greet" / "1")
    ).eval()
    with torch.no_grad():
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            got = merged(**ids).logits
            assert torch.allclose(got, adapted(**ids).logits, atol=1e-5, rtol=0)
            with adapted.disable_adapter():  # the adapter moved the model, so the merge did not drop it
                assert (got - adapted(**ids).logits).abs().max() > 1e-3
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["task"] == "greet" and manifest["version"] == 1 and manifest["base"]["hash"]


def test_ollama_modelfile_names_the_base_and_adapter_with_the_chat_template_as_a_go_template(trained, tmp_path):
    code, out = export(trained, tmp_path, "ollama")
    assert code == 0
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == (
        trained.adapters_dir / "greet" / "1" / "adapter_model.safetensors"
    ).read_bytes()
    turn = '{{{{ {} eq .Role "{}" }}}}<|im_start|>{}\n{{{{ .Content }}}}<|im_end|>\n'
    template = (
        '{{ $last := "" }}{{ range .Messages }}'
        + "".join(
            turn.format(word, role, role) for word, role in (("if", "system"), ("else if", "user"), ("else if", "assistant"))
        )
        + '{{ end }}{{ $last = .Role }}{{ end }}{{ if ne $last "assistant" }}<|im_start|>assistant\n{{ end }}'
    )
    assert (out / "Modelfile").read_text() == (
        f"FROM {trained.base_model}\n"
        "ADAPTER ./adapter\n"
        f'TEMPLATE """{template}"""\n'
        f'SYSTEM """{SYSTEM}"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
        "PARAMETER temperature 0\n"
    )


def test_the_go_template_renders_chats_as_the_chat_template_does_and_other_templates_are_refused(trained):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained.base_model)
    fmt = chat_format(tokenizer)
    chat = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Greet anna."},
        {"role": "assistant", "content": "Hello anna."},
        {"role": "user", "content": "And ben?"},
    ]
    # a chat ending with the assistant is one the model continues (as Ollama does): no generation prompt then
    for turns, add in ((chat, False), (chat, True), (chat[1:], True), (chat[:3], False)):
        assert fmt.render(turns, add) == tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add)
    # a template that writes the first user turn unlike the others is no per-role loop
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.index0 == 1 %}[first]{% endif %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    )
    with pytest.raises(ValueError, match="not a plain loop"):
        chat_format(tokenizer)


def test_vllm_gets_the_lora_modules_line_and_its_json_form_with_the_adapter(trained, tmp_path, capsys):
    code, out = export(trained, tmp_path, "vllm", "--version", "1")
    assert code == 0
    printed = capsys.readouterr().out
    line = f"--lora-modules greet@1={out / 'adapter'}"
    assert (out / "lora_modules.txt").read_text() == line + "\n"
    assert json.loads((out / "lora_modules.json").read_text()) == {
        "name": "greet@1",
        "path": str(out / "adapter"),
        "base_model_name": trained.base_model,
    }
    assert f"vllm serve {trained.base_model} --enable-lora --max-lora-rank 16 {line}" in printed
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_a_non_empty_out_is_kept_unless_forced_and_bad_names_never_become_paths(trained, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert export(trained, tmp_path, "vllm")[0] == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    code, out = export(trained, tmp_path, "vllm", "--force")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "lora_modules.txt").is_file()
    code = main(["--data-dir", str(trained.root), "export", "../greet", "--format", "vllm", "--out", str(tmp_path / "bad")])
    assert code == 2 and "model key '../greet' must be a task name" in capsys.readouterr().err
    assert export(trained, tmp_path, "vllm", "--version", "9", out="missing")[0] == 2
    assert "has no adapter v9" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "missing").exists()
    # --force never replaces the data dir or the folders the export reads
    for kept in (trained.root, trained.adapters_dir / "greet" / "1" / "sub", trained.root.parent):
        code = main(["--data-dir", str(trained.root), "export", "greet", "--format", "vllm", "--out", str(kept), "--force"])
        assert code == 2 and "choose another folder" in capsys.readouterr().err
    assert (trained.adapters_dir / "greet" / "1" / "adapter_model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

"""The base model: builtin build and reload, chat template and assistant spans, idempotent builds, hub errors."""

import json
from pathlib import Path

import pytest

from ft_pipeline.core.datasets import split_records
from ft_pipeline.settings import Settings
from ft_pipeline.training import base_model as bm
from ft_pipeline_tests.conftest import TINY_ARCHITECTURE, TINY_CHATS

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is order 3?"},
    {"role": "assistant", "content": "Order 3 ships tomorrow."},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You are welcome."},
]

LLAMA3_LIKE = (
    "{{- '<|begin_of_text|>' }}{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def _masked_runs(tokenizer, ids, mask):
    """The decoded text of each run of consecutive masked tokens."""
    runs, current = [], []
    for token, flag in zip(ids, mask):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_builtin_builds_saves_and_reloads_with_identical_logits(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer, info = bm.build_builtin(TINY_CHATS, tmp_path, **TINY_ARCHITECTURE, log=lambda _: None)
    assert info["pretrain_steps"] == 3 and info["final_loss"] > 0 and info["parameters"] > 0
    assert info["vocab_size"] == len(tokenizer) <= TINY_ARCHITECTURE["vocab_size"]
    assert bm.read_build_info(tmp_path)["params_hash"] == bm.params_hash(TINY_ARCHITECTURE)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([bm.chat_spans(reloaded_tokenizer, CHAT)[0]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert reloaded_tokenizer.eos_token == "<|im_end|>" and reloaded_tokenizer.pad_token == "<|pad|>"


def test_builtin_build_is_deterministic(tmp_path):
    import torch

    first, _, info1 = bm.build_builtin(TINY_CHATS, tmp_path / "a", **TINY_ARCHITECTURE, log=lambda _: None)
    second, _, info2 = bm.build_builtin(TINY_CHATS, tmp_path / "b", **TINY_ARCHITECTURE, log=lambda _: None)
    assert info1["final_loss"] == info2["final_loss"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_chat_template_renders_chatml(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    text = tokenizer.apply_chat_template(CHAT[:3], tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is order 3?<|im_end|>\n"
        "<|im_start|>assistant\nOrder 3 ships tomorrow.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)


def test_chat_spans_mark_exactly_the_assistant_tokens(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    ids, mask = bm.chat_spans(tokenizer, CHAT)
    assert ids == tokenizer(tokenizer.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False)["input_ids"]
    assert _masked_runs(tokenizer, ids, mask) == ["Order 3 ships tomorrow.<|im_end|>", "You are welcome.<|im_end|>"]
    # The template's {% generation %} markers agree with the prefix rendering.
    marked = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert marked["input_ids"] == ids and marked["assistant_masks"] == mask
    short_ids, short_mask = bm.chat_spans(tokenizer, CHAT, max_length=10)
    assert short_ids == ids[:10] and short_mask == mask[:10]


def test_chat_spans_work_with_another_template(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    tokenizer.chat_template = LLAMA3_LIKE
    ids, mask = bm.chat_spans(tokenizer, CHAT)
    assert _masked_runs(tokenizer, ids, mask) == ["Order 3 ships tomorrow.<|eot_id|>", "You are welcome.<|eot_id|>"]
    with pytest.raises(ValueError, match="no assistant turn"):
        bm.chat_spans(tokenizer, CHAT[:2])


def _tiny_builtin(monkeypatch, tmp_path, **changes):
    """Settings whose builtin model is the tiny architecture, pretrained for 2 steps."""
    arch = {k: v for k, v in TINY_ARCHITECTURE.items() if k not in {"vocab_size", "steps"}}
    monkeypatch.setattr(bm, "BUILTIN_DEFAULTS", arch)
    return Settings(data_dir=str(tmp_path / "data"), builtin_vocab_size=300, builtin_pretrain_steps=2, **changes)


def test_builtin_pretrains_on_the_outputs_of_training_records_only_and_new_knobs_build_beside_the_old_base(
    monkeypatch, tmp_path, write_settlement_rows, make_settlement
):
    settings = _tiny_builtin(monkeypatch, tmp_path, dev_share=0.25, test_share=0.25)
    rows = [
        make_settlement(f"r{i}", task=("a", "b")[i % 2], output=f"Draft number {i}.", final_text=f"Reply number {i}.")
        for i in range(20)
    ]
    write_settlement_rows(settings.lake_dir, rows)
    # a dataset's approved texts are what the adapters learn: the base never reads them when the lake has the outputs
    (settings.datasets_dir / "a").mkdir(parents=True)
    (settings.datasets_dir / "a" / "train.jsonl").write_text(json.dumps({"messages": [{"role": "assistant", "content": "x"}]}))
    chats = bm.pretraining_chats(settings)
    train_ids = [r["log_id"] for r in split_records(rows, settings)["train"]]
    assert 0 < len(train_ids) < 20
    assert sorted(c[-1]["content"] for c in chats) == sorted(f"Draft number {i[1:]}." for i in train_ids)
    assert all(m["role"] != "system" for c in chats for m in c)

    path = bm.ensure_base_model(settings, log=lambda _: None)
    assert path == str(bm.builtin_dir(settings)) and bm.builtin_dir(settings).parent == settings.models_dir / "base"
    info = bm.read_build_info(bm.builtin_dir(settings))
    assert info["documents"] == len(train_ids) and info["pretrain_steps"] == 2
    identity = bm.base_identity(settings)
    assert identity["source"] == "builtin" and identity["path"] == path and len(identity["hash"]) == 64

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    build = bm.build_builtin
    monkeypatch.setattr(bm, "build_builtin", fail)
    assert bm.ensure_base_model(settings, log=lambda _: None) == path
    monkeypatch.setattr(bm, "build_builtin", build)
    changed = settings.replace(builtin_pretrain_steps=3)
    assert bm.existing_base_model(changed) is None
    new_path = bm.ensure_base_model(changed, log=lambda _: None)
    # the old base stays where its adapters expect it, unchanged; the new one sits beside it
    assert new_path != path and bm.read_build_info(Path(path))["pretrain_steps"] == 2
    assert bm.read_build_info(Path(new_path))["pretrain_steps"] == 3
    assert bm.base_identity(settings) == identity and bm.base_identity(changed)["hash"] != identity["hash"]
    assert not list((settings.models_dir / "base").glob(".base.*"))
    with pytest.raises(bm.BaseModelMismatch, match="adapter v1 was trained on base builtin@"):
        bm.check_adapter_base({"base_identity": identity}, bm.base_identity(changed), "adapter v1")

    model, tokenizer = bm.load_base_model(changed)
    assert model.config.vocab_size == len(tokenizer) and tokenizer.pad_token == "<|pad|>"
    info = bm.base_model_info(changed)
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) and info["pretrain_steps"] == 3
    assert info["identity"] == bm.base_identity(changed)["hash"]


def test_identity_hashes_content_and_reuses_its_cache(tiny_model_dir, tmp_path):
    import shutil

    settings = Settings(data_dir=str(tmp_path / "data"), base_model=str(tiny_model_dir))
    first = bm.base_identity(settings)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    # the same files elsewhere are the same base; one changed byte of the weights is another
    assert bm.base_identity(settings.replace(base_model=str(copy)))["hash"] == first["hash"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert bm.base_identity(settings.replace(base_model=str(copy)))["hash"] != first["hash"]
    assert list((settings.models_dir / "identities").glob("*.json"))


def test_pretraining_without_a_lake_reads_the_datasets_training_splits(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    line = {
        "id": "1",
        "weight": 1.0,
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
    }
    (settings.datasets_dir / "t").mkdir(parents=True)
    (settings.datasets_dir / "t" / "train.jsonl").write_text(json.dumps(line) + "\n")
    assert bm.pretraining_chats(settings) == [line["messages"][1:]]


def test_builtin_without_any_text_says_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="materialize settlements first"):
        bm.ensure_base_model(_tiny_builtin(monkeypatch, tmp_path), log=lambda _: None)


def test_local_folder_loads_with_tokenizer_prepared(tiny_model_dir, tmp_path):
    settings = Settings(data_dir=str(tmp_path), base_model=str(tiny_model_dir))
    assert bm.ensure_base_model(settings) == str(tiny_model_dir.resolve())
    tokenizer = bm.load_tokenizer(settings)
    assert tokenizer.chat_template == bm.CHAT_TEMPLATE
    info = bm.base_model_info(settings)
    model, _ = bm.load_base_model(settings)
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) and info["vocab_size"] == len(tokenizer)


def test_unusable_base_models_fail_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE.*FT_BASE_MODEL"):
        bm.ensure_base_model(Settings(data_dir=str(tmp_path), base_model="ft-pipeline-tests/no-such-model"))
    with pytest.raises(ValueError, match="neither an existing folder nor a valid Hugging Face id"):
        bm.load_tokenizer(Settings(data_dir=str(tmp_path), base_model="not//a valid id"))
    with pytest.raises(ValueError, match="has no config.json"):
        bm.ensure_base_model(Settings(data_dir=str(tmp_path), base_model=str(tmp_path)))

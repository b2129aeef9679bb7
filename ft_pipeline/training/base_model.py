"""The base causal LM: a Hugging Face id or local folder, or a small Llama-style model built and pretrained here.

Every base has an identity, a content hash of its weights, tokenizer and chat template: each adapter records
the identity of the base it was trained on and refuses to load on another one. Each builtin build lives in a
folder of its own under models/base/, named by the hash of its parameters, so new knobs build a new base
beside the old one and never replace the base of existing adapters.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ft_pipeline.core.datasets import chat_example, drop_near_duplicates, read_settlements, split_records
from ft_pipeline.core.io import replace_dir_atomic, write_json_atomic

BUILTIN = "builtin"
BUILD_INFO = "build.json"
# Files of a model folder that are no part of the model: build notes, docs, VCS and hub bookkeeping.
NOT_MODEL_FILES = {BUILD_INFO, "README.md", ".gitattributes"}
HASH_CHUNK = 1 << 20
# Bumped when the builtin recipe changes in a way the knobs do not capture, so old builds are rebuilt.
BUILTIN_RECIPE_VERSION = 1
# Architecture and pretraining recipe of the builtin model; vocabulary size and steps are settings knobs.
BUILTIN_DEFAULTS = {
    "hidden": 256,
    "intermediate": 512,
    "layers": 4,
    "heads": 4,
    "seq_len": 256,
    "batch_size": 4,
    "learning_rate": 2e-3,
    "seed": 0,
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
# ChatML with {% generation %} markers, so `return_assistant_tokens_mask` works as well as `chat_spans`.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{%- else %}{{- message['content'] + '<|im_end|>' }}{%- endif %}"
    "{{- '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


class BaseModelMismatch(ValueError):
    """An adapter was asked to load on a base model other than the one it was trained on."""


def builtin_dir(settings: Any) -> Path:
    """Where the builtin base model of the current knobs lives: models/base/<hash of its parameters>/."""
    return settings.models_dir / "base" / params_hash(builtin_params(settings))


def builtin_params(settings: Any) -> dict[str, Any]:
    """Everything that determines the builtin model besides its training text."""
    return {**BUILTIN_DEFAULTS, "vocab_size": settings.builtin_vocab_size, "steps": settings.builtin_pretrain_steps}


def params_hash(params: dict[str, Any]) -> str:
    """Fingerprint of a builtin build's parameters and recipe."""
    text = json.dumps({"recipe": BUILTIN_RECIPE_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_build_info(folder: Path) -> dict[str, Any]:
    """The build manifest of a builtin model folder, or {} when there is none."""
    path = Path(folder) / BUILD_INFO
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def chat_spans(tokenizer: Any, messages: list[dict[str, str]], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of a chat rendered with the tokenizer's template, and a 0/1 mask of the assistant turns' tokens.

    Works for any chat template by rendering prefixes: an assistant turn spans the characters between the
    rendering of the turns before it with the generation prompt and the rendering that includes it.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        # Templates that rewrite earlier turns (e.g. dropping old reasoning) render no stable prefix; skip such turns.
        # Whitespace a template puts between turns belongs to no turn: the model should stop at the end token.
        if text.startswith(through) and through.startswith(before):
            spans.append((len(before), max(len(before), len(through.rstrip()))))
    if not spans:
        raise ValueError("no assistant turn found whose rendering is a prefix of the whole chat")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    mask = [int(any(start <= begin < end for start, end in spans)) for begin, _ in encoded["offset_mapping"]]
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
    )


def pretraining_chats(settings: Any) -> list[list[dict[str, str]]]:
    """Chats (without system prompt) the builtin model pretrains on: the training split's records answered with what
    the model in service wrote (`output`), never a dev or test record; without a lake, the datasets' training examples."""
    records = [r for r in read_settlements(settings.lake_dir, group_by=settings.split_group_by) if r.get("output")]
    if records:
        # the base plays the model that wrote the logs, so what the adapters learn is what people approved of it
        train = split_records(drop_near_duplicates(records, dict(settings.default_system_prompts)), settings)["train"]
        return [chat_example({**r, "final_text": r["output"]}, {})["messages"][1:] for r in train]
    chats = []
    for path in sorted(settings.datasets_dir.glob("*/train.jsonl")):
        with open(path, encoding="utf-8") as fh:
            chats += [[m for m in json.loads(line)["messages"] if m["role"] != "system"] for line in fh if line.strip()]
    return chats


def build_builtin(
    chats: list[list[dict[str, str]]],
    out_dir: Path,
    *,
    vocab_size: int,
    steps: int,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    seq_len: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train a tokenizer and pretrain a small Llama model on `chats`, deterministically; save both and a build manifest to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not chats:
        raise ValueError(
            "no settled text to pretrain the builtin base model on: materialize settlements first, "
            "or set FT_BASE_MODEL to a Hugging Face id or a local model folder"
        )
    params = {
        "vocab_size": vocab_size,
        "steps": steps,
        "hidden": hidden,
        "intermediate": intermediate,
        "layers": layers,
        "heads": heads,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
    }
    tokenizer = train_tokenizer([m["content"] for chat in chats for m in chat], vocab_size)
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids]
    # A corpus shorter than one block is repeated, so tiny test corpora still give full blocks.
    stream = stream * math.ceil(seq_len / len(stream)) if len(stream) < seq_len else stream
    corpus = torch.tensor(stream, dtype=torch.long)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(corpus) - seq_len + 1, (batch_size,), generator=generator)
        batch = torch.stack([corpus[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss  # the model shifts labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"builtin pretraining step {step + 1}/{steps}: loss {losses[-1]:.4f}")
    model.eval()

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-10:]
    info = {
        "source": BUILTIN,
        "params_hash": params_hash(params),
        "params": params,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "pretrain_steps": steps,
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "documents": len(chats),
        "corpus_tokens": len(corpus),
        "built_at": datetime.now(UTC).isoformat(),
    }
    write_json_atomic(info, out_dir / BUILD_INFO)
    return model, tokenizer, info


def ensure_base_model(settings: Any, log: Callable[[str], None] = print) -> str:
    """The base model to load: a local folder's path, a Hugging Face id, or the builtin folder of the current knobs (built if missing)."""
    if settings.base_model != BUILTIN:
        return _resolve_external(settings.base_model)
    target = builtin_dir(settings)
    # Built once per parameter set, not when data grows: adapters trained on it stay valid, and other knobs get their own folder.
    if (target / "config.json").is_file():
        return str(target)
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)
    chats = pretraining_chats(settings)
    log(f"building the builtin base model from {len(chats)} chats into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".base.", dir=target.parent))
    try:
        build_builtin(chats, staging, **builtin_params(settings), log=log)
        replace_dir_atomic(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def existing_base_model(settings: Any) -> str | None:
    """The base model's folder or hub id as ensure_base_model gives it, or None when the builtin of these knobs is not built."""
    if settings.base_model != BUILTIN:
        return _resolve_external(settings.base_model)
    target = builtin_dir(settings)
    return str(target) if (target / "config.json").is_file() else None


def base_identity(settings: Any, source: str | None = None) -> dict[str, Any]:
    """Identity of the base model: what was asked for, the folder it was loaded from, and a content hash of its
    weights, tokenizer and chat template (cached under models/identities/ by file sizes and modification times)."""
    source = source or ensure_base_model(settings)
    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        # a hub id the hub answers for: its files are what from_pretrained loads, so they are what is hashed
        folder = Path(snapshot_download(source))
    return {"source": settings.base_model, "path": str(folder), "hash": content_hash(folder, settings.models_dir / "identities")}


def content_hash(folder: Path, cache_dir: Path) -> str:
    """sha256 over the model files of `folder` (names and bytes) and the chat template used when it ships none, cached
    in `cache_dir` by file sizes and modification times."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in NOT_MODEL_FILES and not p.name.startswith("."))
    stat = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = Path(cache_dir) / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("files") == stat:
            return str(cached["hash"])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    if not _ships_chat_template(folder):
        # _prepared gives such a tokenizer our template: it is part of what the adapter learned to answer in
        digest.update(b"chat_template\0" + CHAT_TEMPLATE.encode("utf-8"))
    value = digest.hexdigest()
    write_json_atomic({"path": str(folder), "files": stat, "hash": value}, cache)
    return value


def _ships_chat_template(folder: Path) -> bool:
    """Whether the tokenizer files in `folder` carry a chat template of their own."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


def describe_identity(identity: dict[str, Any] | None) -> str:
    """A base identity in one line: source, short hash and folder."""
    if not identity:
        return "unknown (trained before bases were pinned)"
    return f"{identity.get('source')}@{str(identity.get('hash'))[:12]} ({identity.get('path')})"


def check_adapter_base(adapter_config: dict[str, Any], identity: dict[str, Any], label: str) -> None:
    """BaseModelMismatch when the adapter described by `adapter_config` was trained on another base than `identity`."""
    pinned = adapter_config.get("base_identity")
    if pinned and pinned.get("hash") != identity.get("hash"):
        raise BaseModelMismatch(
            f"{label} was trained on base {describe_identity(pinned)}, not on the loaded base {describe_identity(identity)}; "
            "an adapter only works on its own base: set FT_BASE_MODEL (and the FT_BUILTIN_* knobs) to what it was trained "
            "with, or retrain it on this base"
        )


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _resolve_external(name: str) -> str:
    """A local folder's resolved path, a cached hub snapshot's folder, or the hub id when the hub answers; else ValueError."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(f"base model folder {folder} has no config.json; point FT_BASE_MODEL at a saved model folder")
        return str(folder.resolve())
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    fix = (
        f"download it where the hub is reachable (`hf download {name}`) into the HF cache, or set FT_BASE_MODEL "
        "to a local model folder, or to 'builtin' for the small model built locally"
    )
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        raise ValueError(f"base model {name!r} is neither an existing folder nor a valid Hugging Face id; {fix}") from None
    if isinstance(cached, str):
        return str(Path(cached).parent)
    if _offline():
        raise ValueError(f"base model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fix}")
    if not _hub_reachable():
        raise ValueError(f"base model {name!r} is not cached and the Hugging Face hub cannot be reached; {fix}")
    return name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection: a fast answer instead of minutes of download retries."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def _prepared(tokenizer: Any) -> Any:
    """A tokenizer ready for chat training: a chat template and a pad token even when the base model ships none."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(settings: Any, source: str | None = None) -> Any:
    """The base model's tokenizer (from `source` when given, else the settings' base, building the builtin first when needed)."""
    from transformers import AutoTokenizer

    return _prepared(AutoTokenizer.from_pretrained(source or ensure_base_model(settings)))


# the base models of an open `shared_base()` block, by (source, device)
_SHARED: ContextVar[dict[tuple[str, str], tuple[Any, Any]] | None] = ContextVar("shared_base", default=None)


@contextmanager
def shared_base() -> Iterator[dict[tuple[str, str], tuple[Any, Any]]]:
    """A block in which `load_base_model` loads each base once and hands the same model to every caller (the trainings
    of many segments in one process); each caller takes its adapters out again with `release_base`."""
    cache: dict[tuple[str, str], tuple[Any, Any]] = {}
    token = _SHARED.set(cache)
    try:
        yield cache
    finally:
        _SHARED.reset(token)


def release_base(model: Any) -> None:
    """Take every adapter out of a peft-wrapped base again, so that the base is as loaded for its next user."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.unload()


def _has_adapters(model: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def load_base_model(settings: Any, device: str = "cpu", source: str | None = None) -> tuple[Any, Any]:
    """The base causal LM on `device` and its tokenizer (from `source` when given, else the settings' base); inside
    `shared_base()`, the one already loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # A per-load progress bar drowns the step progress in the run log.
    transformers_logging.disable_progress_bar()
    source = source or ensure_base_model(settings)
    cache = _SHARED.get()
    # a user that failed before releasing it leaves adapters in the base: that copy is not handed out again
    if cache is not None and (source, device) in cache and not _has_adapters(cache[(source, device)][0]):
        return cache[(source, device)]
    model: Any = AutoModelForCausalLM.from_pretrained(source)
    loaded = model.to(device), _prepared(AutoTokenizer.from_pretrained(source))
    if cache is not None:
        cache[(source, device)] = loaded
    return loaded


def base_model_info(settings: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Where the base model is and its size; for the builtin also its pretraining steps and final loss."""
    source = ensure_base_model(settings, log=log)
    identity = base_identity(settings, source)["hash"]
    if settings.base_model == BUILTIN:
        info = read_build_info(Path(source))
        keys = ("parameters", "vocab_size", "pretrain_steps", "final_loss", "documents", "built_at")
        return {"path": source, "source": BUILTIN, "identity": identity, **{k: info.get(k) for k in keys}}
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    # Counted on the meta device: no weights are loaded, so this is instant even for a large model.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {
        "path": source,
        "source": settings.base_model,
        "identity": identity,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
    }

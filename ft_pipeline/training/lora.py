"""LoRA fine-tuning of the base model on one task's dataset, logged to MLflow and registered as a model version."""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ft_pipeline.core.io import atomic_path, checked_name, read_jsonl, replace_dir_atomic, write_json_atomic
from ft_pipeline.core.lineage import (
    ADAPTER_CONFIG,
    adapter_dir,
    dataset_dir,
    latest_adapter,
    read_adapter_config,
    read_dataset_manifest,
    record_adapter,
)
from ft_pipeline.core.locks import hold
from ft_pipeline.core.scratch import scratch_dir
from ft_pipeline.core.segments import checked_model_key, split_model_key, task_of
from ft_pipeline.settings import Settings
from ft_pipeline.training.data import IGNORE, Example, collate, encode_all, length_grouped_batches

# Attention and MLP projections per architecture (model_type); others get every Linear layer but the output head.
TARGET_MODULES = {
    **{
        key: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for key in ["llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "smollm3"]
    },
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
# Architectures whose logits are exactly lm_head(last hidden state): the loss then projects only the assistant
# positions onto the vocabulary instead of every position (no softcapping or logit scaling to reproduce).
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2", "gpt_neox", "opt", "phi", "phi3", "starcoder2", "gptj"}
# Knobs that decide what is learned; they go into training_config.json, MLflow params and the checkpoint fingerprint.
HYPERPARAMETERS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "learning_rate",
    "batch_size",
    "max_steps",
    "eval_every",
    "early_stopping_patience",
    "checkpoint_every",
    "seed",
    "max_seq_len",
)
WARMUP_SHARE = 0.05  # of max_steps, linear warmup before the cosine decay
MAX_GRAD_NORM = 1.0
CHECKPOINT_FILE = "checkpoint.pt"

Log = Callable[[str], None]


@dataclass
class FitResult:
    """What a training loop did: steps, losses per step, the best dev loss and its step, throughput."""

    steps: int
    best_step: int
    best_dev_loss: float | None
    train_loss: list[tuple[int, float]]
    dev_loss: list[tuple[int, float]]
    tokens_per_s: float
    stopped_early: bool
    resumed_from_step: int | None


@dataclass
class TrainResult:
    """A trained, registered adapter: its version, folder, MLflow run and headline metrics."""

    task: str
    version: int
    adapter_dir: Path
    run_id: str
    run_path: str
    metrics: dict[str, Any] = field(default_factory=dict)


def resolve_device(setting: str) -> str:
    """'cuda' or 'cpu' for a device setting ('auto' picks the GPU when present)."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def target_modules(model: Any, spec: str = "auto") -> list[str]:
    """Module names LoRA wraps: the given comma list, the architecture's projections, or every Linear but the head."""
    if spec != "auto":
        return [name.strip() for name in spec.split(",") if name.strip()]
    leaf = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    known = [name for name in TARGET_MODULES.get(model.config.model_type, []) if name in leaf]
    if known:
        return known
    head = model.get_output_embeddings()
    head_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is head} | {"lm_head"}
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(linear - head_names)


def wrap_lora(model: Any, settings: Settings) -> Any:
    """The model with fresh LoRA adapters (seeded by the caller) on its target modules; base weights frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=target_modules(model, settings.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def example_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over each example's assistant tokens, one value per example."""
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config.model_type in PLAIN_HEAD:
        hidden = base.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][mask])
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    token_loss = torch.nn.functional.cross_entropy(logits.float(), targets[mask], reduction="none")
    # Dense per-row sums rather than index_add_, whose parallel CPU reduction order is not guaranteed.
    per_position = torch.zeros(mask.shape, dtype=token_loss.dtype, device=token_loss.device)
    per_position[mask] = token_loss
    return per_position.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _autocast(device: str) -> contextlib.AbstractContextManager:
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def evaluate_loss(model: Any, examples: list[Example], batch_size: int, pad_id: int, device: str) -> float:
    """Mean per-example assistant-token loss of `examples` (unweighted), in length-sorted batches."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad(), _autocast(device):
        for start in range(0, len(order), batch_size):
            batch = _to(collate([examples[i] for i in order[start : start + batch_size]], pad_id), device)
            total += example_losses(model, batch).sum().item()
    model.train(was_training)
    return total / len(examples)


def _lora_state(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _load_lora_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def read_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A resumable checkpoint at `path` made with the same hyperparameters and data, else None."""
    if not Path(path).is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if state.get("fingerprint") == fingerprint else None


def fit(
    model: Any,
    train: list[Example],
    dev: list[Example],
    settings: Settings,
    *,
    pad_id: int,
    log: Log = print,
    tracker: Any = None,
    checkpoint: Path | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> FitResult:
    """Train the LoRA weights of `model` in place; ends holding the weights of the best loss on `dev` (never the test split)."""
    device = next(model.parameters()).device.type
    max_steps, batch_size = settings.max_steps, settings.batch_size
    lengths = [len(e.input_ids) for e in train]
    # Weights scale each example's loss; dividing by their mean keeps the effective learning rate that of weight 1.
    mean_weight = sum(e.weight for e in train) / len(train)
    if mean_weight <= 0:
        raise ValueError("every training example has weight 0")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    warmup = max(1, round(WARMUP_SHARE * max_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, max_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    s: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "position": 0,
        "best_loss": math.inf,
        "best_step": 0,
        "best_state": None,
        "bad_evals": 0,
        "stopped_early": False,
        "train_loss": [],
        "dev_loss": [],
    }
    if resume is not None:
        _load_lora_state(model, resume["lora"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"])
        if device == "cuda" and resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        s.update(resume["loop"])
        log(f"resumed from checkpoint at step {s['step']}")
    resumed_from = s["step"] if resume is not None else None

    def evaluate(step: int) -> None:
        loss = evaluate_loss(model, dev, batch_size, pad_id, device)
        s["dev_loss"].append((step, loss))
        if tracker is not None:
            tracker.log_metrics({"dev_loss": loss}, step)
        if loss < s["best_loss"]:
            s.update(best_loss=loss, best_step=step, best_state=_lora_state(model), bad_evals=0)
        else:
            s["bad_evals"] += 1
        log(f"step {step}/{max_steps} dev_loss {loss:.4f} (best {s['best_loss']:.4f} at step {s['best_step']})")
        if s["bad_evals"] >= settings.early_stopping_patience:
            s["stopped_early"] = True
            log(f"early stop at step {step}: no better dev loss in {s['bad_evals']} evaluations")

    if dev and resume is None:
        evaluate(0)
    log_every = max(1, max_steps // 50)
    batches = length_grouped_batches(lengths, batch_size, settings.seed + s["epoch"])
    model.train()
    started, first_step, tokens = time.perf_counter(), s["step"], 0
    while s["step"] < max_steps and not s["stopped_early"]:
        if s["position"] >= len(batches):
            s["epoch"] += 1
            s["position"] = 0
            batches = length_grouped_batches(lengths, batch_size, settings.seed + s["epoch"])
        batch = _to(collate([train[i] for i in batches[s["position"]]], pad_id), device)
        s["position"] += 1
        with _autocast(device):
            per_example = example_losses(model, batch)
        loss = (per_example * batch["weight"]).sum() / (len(per_example) * mean_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        s["step"] += 1
        step = s["step"]
        tokens += int(batch["attention_mask"].sum())
        s["train_loss"].append((step, loss.item()))
        if tracker is not None:
            tracker.log_metrics({"train_loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0]}, step)
        if step % log_every == 0 or step == max_steps:
            elapsed = time.perf_counter() - started
            eta = elapsed / (step - first_step) * (max_steps - step)
            log(f"step {step}/{max_steps} loss {loss.item():.4f} tokens/s {tokens / elapsed:.0f} eta {eta:.0f}s")
        if dev and (step % settings.eval_every == 0 or step == max_steps):
            evaluate(step)
        if checkpoint is not None and step % settings.checkpoint_every == 0 and step < max_steps and not s["stopped_early"]:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, s, device, checkpoint_extra)
            if tracker is not None:
                # Metrics reach MLflow at checkpoints, so a resumed run never logs a step twice.
                tracker.flush()
    if s["best_state"] is not None:
        _load_lora_state(model, s["best_state"])
    elapsed = time.perf_counter() - started
    return FitResult(
        steps=s["step"],
        best_step=s["best_step"] if dev else s["step"],
        best_dev_loss=s["best_loss"] if dev else None,
        train_loss=[tuple(x) for x in s["train_loss"]],
        dev_loss=[tuple(x) for x in s["dev_loss"]],
        tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
        stopped_early=s["stopped_early"],
        resumed_from_step=resumed_from,
    )


def _save_checkpoint(
    path: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    loop: dict[str, Any],
    device: str,
    extra: dict[str, Any] | None,
) -> None:
    """Everything a crashed run needs to continue bit-identically, written atomically."""
    state = {
        **(extra or {}),
        "lora": _lora_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device == "cuda" else None,
        "loop": dict(loop),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def warm_start_source(settings: Settings, key: str, identity: dict[str, Any], log: Log) -> dict[str, Any] | None:
    """The adapter a segment's training starts from: its task's champion when FT_SEGMENT_WARM_START is on and that
    champion has this LoRA shape and base; None (a fresh adapter) otherwise, with the reason logged."""
    from ft_pipeline.training.base_model import BaseModelMismatch, check_adapter_base
    from ft_pipeline.training.champion import current_champion

    task, segment = split_model_key(key)
    if segment is None or not settings.segment_warm_start:
        return None
    version = current_champion(settings, task)
    if version is None:
        log(f"{key}: task {task} has no champion yet; the adapter starts from scratch")
        return None
    config = read_adapter_config(settings.adapters_dir, task, version)
    try:
        check_adapter_base(config, identity, f"task champion {task} v{version}")
    except BaseModelMismatch as exc:
        log(f"{key}: not starting from {task} v{version}: {exc}")
        return None
    shape = ("lora_r", "lora_alpha", "lora_target_modules")
    if any(config.get(name) != getattr(settings, name) for name in shape):
        log(f"{key}: {task} v{version} has another LoRA shape ({', '.join(shape)}); the adapter starts from scratch")
        return None
    return {"task": task, "version": version, "hash": config.get("fingerprint")}


def load_warm_start(model: Any, settings: Settings, source: dict[str, Any]) -> None:
    """Copy the weights of the warm-start adapter into `model`'s fresh LoRA modules of the same shape."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir(settings.adapters_dir, source["task"], source["version"]) / "adapter_model.safetensors"))
    result: Any = set_peft_model_state_dict(model, weights)  # torch's incompatible-keys pair
    missing = [name for name in result.missing_keys if "lora_" in name]
    if missing or result.unexpected_keys:
        raise ValueError(f"warm start from {source['task']} v{source['version']}: the adapter's weights do not fit {missing[:3]}")


def hyperparameters(settings: Settings) -> dict[str, Any]:
    """The knobs that decide what a training run learns."""
    return {name: getattr(settings, name) for name in HYPERPARAMETERS}


def validation_ok(report_path: Path) -> tuple[bool, str]:
    """Whether a dataset's validation report allows training, with the reason when it does not."""
    if not report_path.is_file():
        return True, ""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if report.get("valid", True) is False:
        return False, "dataset validation failed: " + ("; ".join(report.get("problems") or []) or f"see {report_path}")
    return True, ""


def checkpoint_dir(settings: Settings, task: str, dataset_version: str) -> Path:
    """Where a task's interrupted training on one dataset version keeps its checkpoint."""
    return settings.root / "checkpoints" / checked_model_key(task) / checked_name(str(dataset_version), "dataset version")


def train_task(settings: Settings, task: str, log: Log = print, tags: dict[str, str] | None = None) -> TrainResult:
    """Train, log, register and store a LoRA adapter for one task; resumes an interrupted run of the same data.

    Trainings of one task take turns (a second one waits, then finds the adapter up to date); each first finishes
    what killed trainings of the task left behind.
    """
    from ft_pipeline.training.leftovers import finish_dead_trainings

    task = checked_model_key(task)
    with hold(settings.root, f"train-{task}"):
        leftovers = finish_dead_trainings(settings, task)
        if leftovers:
            log(f"{task}: {leftovers.describe()}")
        return _train_locked(settings, task, log, tags)


def _train_locked(settings: Settings, task: str, log: Log, tags: dict[str, str] | None) -> TrainResult:
    from ft_pipeline.training.base_model import base_identity, ensure_base_model, load_base_model, release_base
    from ft_pipeline.training.leftovers import ADAPTER_SCRATCH
    from ft_pipeline.training.pyfunc import save_model as save_pyfunc_model
    from ft_pipeline.training.tracking import DATASET_ARTIFACTS, Tracker, run_path

    folder = dataset_dir(settings.datasets_dir, task)
    manifest = read_dataset_manifest(settings.datasets_dir, task)
    if manifest is None:
        raise FileNotFoundError(f"no dataset for task {task!r} under {folder}; materialize task_dataset first")
    ok, reason = validation_ok(folder / "validation.json")
    if not ok:
        raise ValueError(f"task {task!r}: {reason}")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    source = ensure_base_model(settings)
    identity = base_identity(settings, source)
    model, tokenizer = load_base_model(settings, device=device, source=source)
    train, dropped = encode_all(tokenizer, read_jsonl(folder / "train.jsonl"), settings.max_seq_len)
    # dev chooses the checkpoint; the test split is left for the promotion decision alone
    dev, _ = encode_all(tokenizer, read_jsonl(folder / "dev.jsonl"), settings.max_seq_len)
    if not train:
        raise ValueError(f"task {task!r}: no training example has an assistant turn within max_seq_len")
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    hyper = hyperparameters(settings)
    lineage = {
        "base_model": settings.base_model,
        "base_hash": identity["hash"],
        "dataset_version": manifest["version"],
        "data_watermark": manifest.get("data_watermark"),
        "n_train": len(train),
        "n_dev": len(dev),
        "dropped_examples": dropped,
        "device": device,
        "warm_start": warm_start_source(settings, task, identity, log),
    }
    fingerprint = hashlib.sha256(json.dumps([hyper, lineage], sort_keys=True, default=str).encode()).hexdigest()
    latest = latest_adapter(settings.adapters_dir, task)
    if latest is not None and latest.get("fingerprint") == fingerprint:
        # Training is deterministic: the same data and settings would only register a copy of this adapter.
        log(
            f"{task}: adapter v{latest['version']} was trained on dataset {manifest['version'][:12]} with these settings; not retraining"
        )
        return up_to_date_result(settings, task, latest)
    ckpt_dir = checkpoint_dir(settings, task, manifest["version"])
    resume = read_checkpoint(ckpt_dir / CHECKPOINT_FILE, fingerprint)

    torch.manual_seed(settings.seed)  # LoRA init and dropout draw from it
    model = wrap_lora(model, settings)
    if lineage["warm_start"] is not None:
        load_warm_start(model, settings, lineage["warm_start"])
    trainable, total = trainable_parameters(model)
    modules = target_modules(model.get_base_model(), settings.lora_target_modules)
    run_tags = {k: str(v) for k, v in (tags or {}).items()}
    if resume is not None:
        tracker = Tracker.resume(settings, resume["run_id"], {**run_tags, "resumed": "true"})
    else:
        params = {**hyper, **lineage, "target_modules": ",".join(modules), "trainable_params": trainable, "total_params": total}
        tracker = Tracker.start(settings, task, params, run_tags, run_name=f"{task}-{manifest['version'][:8]}")
    log(
        f"training {task}: {len(train)} train / {len(dev)} dev examples, {trainable:,} of {total:,} weights trainable "
        f"on {device}; MLflow run {tracker.run_id}"
    )
    # staged outside adapters/, in a folder whose lock dies with this process, so a killed save is swept next time
    with scratch_dir(settings.root, ADAPTER_SCRATCH) as work:
        staging = work / "adapter"
        try:
            result = fit(
                model,
                train,
                dev,
                settings,
                pad_id=pad_id,
                log=log,
                tracker=tracker,
                checkpoint=ckpt_dir / CHECKPOINT_FILE,
                resume=resume,
                checkpoint_extra={"fingerprint": fingerprint, "run_id": tracker.run_id},
            )
            model.save_pretrained(staging)
            tracker.log_artifacts(staging, "adapter")
            if (folder / "validation.json").is_file():
                tracker.log_artifact(folder / "validation.json")
            # the exact files trained, chosen and judged on, so the adapter's data can be replayed after the dataset moved on
            for name in DATASET_ARTIFACTS:
                if (folder / name).is_file():
                    tracker.log_artifact(folder / name, "dataset")
            # the registered version is an MLflow pyfunc model of the adapter on its pinned base
            pyfunc_model = functools.partial(
                save_pyfunc_model,
                adapter=staging,
                identity=identity,
                identity_cache=settings.models_dir / "identities",
                system=settings.default_system_prompts.get(task_of(task)),
            )
            version = tracker.register(
                task,
                "adapter",
                {
                    "dataset_version": manifest["version"],
                    "mlflow_run_id": tracker.run_id,
                    "base_model": settings.base_model,
                    "base_hash": identity["hash"],
                    "data_watermark": manifest.get("data_watermark"),
                },
                model_id=tracker.log_model(task, pyfunc_model),
            )
            config = {
                **hyper,
                **lineage,
                "base_identity": identity,
                "n_test": manifest.get("n_test"),
                "split": manifest.get("split"),
                "dagster_run_id": run_tags.get("dagster_run_id"),
                "target_modules": modules,
                "trainable_params": trainable,
                "mlflow_run_id": tracker.run_id,
                "trained_at": datetime.now(UTC).isoformat(),
                "version": version,
                "fingerprint": fingerprint,
                "steps": result.steps,
                "best_step": result.best_step,
                "best_dev_loss": result.best_dev_loss,
            }
            write_json_atomic(config, staging / ADAPTER_CONFIG)
            tracker.log_artifact(staging / ADAPTER_CONFIG, "adapter")
            tracker.log_artifact(staging / ADAPTER_CONFIG)
            target = replace_dir_atomic(staging, adapter_dir(settings.adapters_dir, task, version))
            record_adapter(settings.adapters_dir, task, version, manifest.get("data_watermark"))
            summary = {
                "best_dev_loss": result.best_dev_loss,
                "best_step": result.best_step,
                "steps": result.steps,
                "tokens_per_s": result.tokens_per_s,
                "stopped_early": float(result.stopped_early),
            }
            tracker.log_metrics({k: v for k, v in summary.items() if v is not None}, result.steps)
            tracker.set_tags({"adapter_version": version, "adapter_dir": str(target)})
            tracker.finish()
        except BaseException as exc:
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finally:
            release_base(model)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    metrics = {
        **summary,
        "train_loss": result.train_loss[-1][1] if result.train_loss else None,
        "initial_dev_loss": result.dev_loss[0][1] if result.dev_loss else None,
        "trainable_params": trainable,
        "n_train": len(train),
        "n_dev": len(dev),
        "resumed_from_step": result.resumed_from_step,
        "retrained": True,
    }
    log(f"adapter {task} v{version} -> {target} (best dev_loss {result.best_dev_loss} at step {result.best_step})")
    return TrainResult(task, version, target, tracker.run_id, run_path(settings, tracker.run_id), metrics)


def up_to_date_result(settings: Settings, task: str, config: dict[str, Any]) -> TrainResult:
    """The result of a training that found its adapter already trained, from that adapter's saved config."""
    from ft_pipeline.training.tracking import run_path

    metrics = {
        "best_dev_loss": config.get("best_dev_loss"),
        "best_step": config.get("best_step"),
        "steps": config.get("steps"),
        "tokens_per_s": None,
        "stopped_early": None,
        "train_loss": None,
        "initial_dev_loss": None,
        "trainable_params": config.get("trainable_params"),
        "n_train": config.get("n_train"),
        "n_dev": config.get("n_dev"),
        "resumed_from_step": None,
        "retrained": False,
    }
    version = int(config["version"])
    return TrainResult(
        task,
        version,
        adapter_dir(settings.adapters_dir, task, version),
        config["mlflow_run_id"],
        run_path(settings, config["mlflow_run_id"]),
        metrics,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: train one task's adapter outside Dagster."""
    parser = argparse.ArgumentParser(prog="python -m ft_pipeline.training.lora", description=train_task.__doc__)
    parser.add_argument("--task", required=True, help="Task whose dataset under datasets/<task>/ is trained on.")
    parser.add_argument("--data-dir", help="Overrides FT_DATA_DIR.")
    parser.add_argument("--max-steps", type=int, help="Overrides FT_MAX_STEPS.")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="Overrides FT_DEVICE.")
    args = parser.parse_args(argv)
    settings = Settings.from_env(data_dir=args.data_dir, max_steps=args.max_steps, device=args.device)
    result = train_task(settings, args.task, log=lambda msg: print(msg, flush=True))
    print(
        json.dumps(
            {
                "version": result.version,
                "adapter_dir": str(result.adapter_dir),
                "run_id": result.run_id,
                "run": result.run_path,
                **result.metrics,
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

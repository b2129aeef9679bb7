"""Training speed: non-pad tokens/s of ft_pipeline's LoRA loop and of plain transformers.Trainer + peft, and their ratio."""

# Run: .venv/bin/python bench/train.py [--steps 30] [--threads 2] [--rounds 1]
# Same model (builtin architecture), data, hyperparameters and seed for both, side by side in one process.

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from ft_pipeline.settings import Settings
from ft_pipeline.training.data import encode_all, length_grouped_batches, padding_share, random_batches
from ft_pipeline.training.lora import fit, wrap_lora

WORDS = [
    "please",
    "summarise",
    "the",
    "ticket",
    "customer",
    "reports",
    "that",
    "the",
    "invoice",
    "total",
    "is",
    "wrong",
    "after",
    "the",
    "upgrade",
    "and",
    "asks",
    "for",
    "a",
    "refund",
    "of",
    "the",
    "difference",
    "we",
    "checked",
    "the",
    "account",
    "history",
    "found",
    "a",
    "duplicate",
    "charge",
    "on",
    "the",
    "card",
]


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Chats whose prompts and answers vary in length the way product logs do (short to a few hundred tokens)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choices(WORDS, k=int(rng.lognormvariate(3.5, 0.8)) + 3))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(3, 60)))
        messages = [
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
        rows.append({"messages": messages, "weight": 1.0, "id": str(i)})
    return rows


def build_base(rows: list[dict], folder: Path) -> None:
    """The builtin architecture (Llama, hidden 256, 4 layers), randomly initialised, with a tokenizer for `rows`."""
    from ft_pipeline.training.base_model import build_builtin

    build_builtin(
        [r["messages"] for r in rows],
        folder,
        vocab_size=2048,
        steps=0,
        hidden=256,
        intermediate=512,
        layers=4,
        heads=4,
        seq_len=128,
        batch_size=16,
        learning_rate=1e-3,
        seed=0,
        log=lambda _: None,
    )


def run_ours(settings: Settings, train) -> float:
    """Non-pad tokens per second of ft_pipeline's loop."""
    from ft_pipeline.training.base_model import load_base_model

    model, tokenizer = load_base_model(settings)
    torch.manual_seed(settings.seed)
    model = wrap_lora(model, settings)
    return fit(model, train, [], settings, pad_id=tokenizer.pad_token_id, log=lambda _: None).tokens_per_s


def run_trainer(settings: Settings, train) -> float:
    """Non-pad tokens per second of transformers.Trainer with peft on the same examples."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from ft_pipeline.training.base_model import load_base_model

    model, tokenizer = load_base_model(settings)
    torch.manual_seed(settings.seed)
    model = wrap_lora(model, settings)
    features = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in train]
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    tokens = 0

    def counting_collator(batch):
        nonlocal tokens
        tokens += sum(len(f["input_ids"]) for f in batch)
        return pad(batch)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, round(0.05 * settings.max_steps)),
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=settings.seed,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=features, data_collator=counting_collator, processing_class=tokenizer
        )
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
    return tokens / elapsed


def main(argv: list[str] | None = None) -> int:
    """Build the model and data, train both ways, print tokens/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="Alternating rounds; the best of each side is reported.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = synthetic_rows(args.examples, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        build_base(rows, Path(tmp) / "base")
        settings = Settings(
            data_dir=tmp,
            base_model=str(Path(tmp) / "base"),
            device="cpu",
            max_steps=args.steps,
            batch_size=args.batch_size,
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            learning_rate=1e-3,
        )
        from transformers import AutoTokenizer

        train, _ = encode_all(AutoTokenizer.from_pretrained(settings.base_model), rows, settings.max_seq_len)
        lengths = [len(e.input_ids) for e in train]
        print(
            f"{len(train)} examples, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); "
            f"padding share: length-grouped {padding_share(lengths, length_grouped_batches(lengths, args.batch_size, 0)):.1%}, "
            f"random {padding_share(lengths, random_batches(len(lengths), args.batch_size, 0)):.1%}"
        )
        ours, theirs = [], []
        for _ in range(args.rounds):
            theirs.append(run_trainer(settings, train))
            ours.append(run_ours(settings, train))
    print(f"ft_pipeline loop : {max(ours):8.0f} non-pad tokens/s")
    print(f"Trainer + peft   : {max(theirs):8.0f} non-pad tokens/s")
    print(
        f"ratio            : {max(ours) / max(theirs):.2f}x  (threads {args.threads}, {args.steps} steps, batch {args.batch_size})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

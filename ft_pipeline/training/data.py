"""Training data: chat examples tokenized with assistant-only labels, length-grouped batches padded to their longest."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100
# Examples sorted by length within windows of this many batches: batches hold near-equal lengths (little padding)
# while the window keeps some randomness in which examples meet.
GROUP_WINDOW_BATCHES = 64


@dataclass(frozen=True)
class Example:
    """One tokenized training example: token ids, labels (IGNORE outside assistant turns) and its weight."""

    input_ids: list[int]
    labels: list[int]
    weight: float
    id: str


def encode(tokenizer: Any, row: dict[str, Any], max_len: int) -> Example | None:
    """A dataset row tokenized with its chat template and truncated; None when no assistant token survives."""
    from ft_pipeline.training.base_model import chat_spans

    input_ids, mask = chat_spans(tokenizer, row["messages"])
    input_ids, mask = list(input_ids)[:max_len], list(mask)[:max_len]
    labels = [t if m else IGNORE for t, m in zip(input_ids, mask)]
    # The first token is never predicted (nothing precedes it), so it cannot carry the loss alone.
    if not any(label != IGNORE for label in labels[1:]):
        return None
    return Example(input_ids, labels, float(row.get("weight", 1.0)), str(row.get("id", "")))


def encode_all(tokenizer: Any, rows: Iterable[dict[str, Any]], max_len: int) -> tuple[list[Example], int]:
    """Every row encoded, and how many were dropped for having no assistant token within max_len."""
    examples, dropped = [], 0
    for row in rows:
        example = encode(tokenizer, row, max_len)
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    return examples, dropped


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Indices in batches of similar length: shuffled, sorted by length within windows, batch order shuffled."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * GROUP_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        # sorted() is stable, so equal lengths keep their shuffled order and vary between epochs.
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Indices in shuffled batches regardless of length (the usual sampler, for comparison)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the token slots of padded batches that are padding."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths) / slots if slots else 0.0


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch padded on the right to its longest example: input_ids, attention_mask, labels, weight."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    weight = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "weight": weight}

"""Tokenization with assistant-only labels, length-grouped batching and padding."""

import random

import pytest

from ft_pipeline.training.data import (
    IGNORE,
    collate,
    encode,
    encode_all,
    length_grouped_batches,
    padding_share,
    random_batches,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _row(prompt, answer, weight=1.0):
    return {
        "id": prompt,
        "weight": weight,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ],
    }


def test_labels_cover_only_the_assistant_turn(tokenizer):
    example = encode(tokenizer, _row("the dog ran to the park", "the cat sat on a mat", 2.0), 512)
    labelled = [t for t in example.labels if t != IGNORE]
    assert tokenizer.decode(labelled, skip_special_tokens=True).strip() == "the cat sat on a mat"
    assert len(example.labels) == len(example.input_ids)
    assert example.weight == 2.0 and example.id == "the dog ran to the park"


def test_truncation_drops_examples_without_assistant_tokens(tokenizer):
    rows = [_row("the dog ran " * 40, "the cat"), _row("hi", "the cat")]
    examples, dropped = encode_all(tokenizer, rows, max_len=48)
    assert dropped == 1 and [e.id for e in examples] == ["hi"]
    assert all(len(e.input_ids) <= 48 for e in examples)


def test_length_grouped_batches_cover_every_index_once_and_are_seeded():
    lengths = [random.Random(i).randint(5, 300) for i in range(200)]
    batches = length_grouped_batches(lengths, 16, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert batches == length_grouped_batches(lengths, 16, seed=3)
    assert batches != length_grouped_batches(lengths, 16, seed=4)


def test_length_grouping_wastes_less_padding_than_random_batches():
    lengths = [random.Random(i).randint(5, 300) for i in range(500)]
    grouped = padding_share(lengths, length_grouped_batches(lengths, 16, seed=0))
    shuffled = padding_share(lengths, random_batches(len(lengths), 16, seed=0))
    assert grouped < 0.05 < 0.3 < shuffled


def test_collate_pads_to_the_longest_example_of_the_batch(tokenizer):
    examples, _ = encode_all(tokenizer, [_row("hi", "the cat"), _row("the dog ran to the park", "the cat sat", 0.5)], 512)
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    longest = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == (2, longest)
    assert batch["attention_mask"].sum().item() == sum(len(e.input_ids) for e in examples)
    short = min(range(2), key=lambda i: len(examples[i].input_ids))
    n = len(examples[short].input_ids)
    assert (batch["input_ids"][short, n:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][short, n:] == IGNORE).all()
    assert batch["weight"].tolist() == [e.weight for e in examples]

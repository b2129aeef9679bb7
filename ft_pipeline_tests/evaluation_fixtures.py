"""Tiny models, datasets and trained adapters for the evaluation, champion and serving tests."""

import json
from pathlib import Path

from ft_pipeline.core.io import write_json_atomic, write_jsonl_atomic
from ft_pipeline.settings import Settings

TASK = "greet"
NAMES = [
    "anna",
    "ben",
    "carl",
    "dora",
    "emil",
    "fay",
    "gus",
    "hana",
    "ivo",
    "jana",
    "karl",
    "lea",
    "max",
    "nina",
    "otto",
    "pia",
    "quin",
    "rosa",
    "sam",
    "tina",
    "udo",
    "vera",
    "walt",
    "xena",
    "yuri",
    "zoe",
    "alma",
    "bert",
    "cleo",
    "dirk",
    "edda",
    "finn",
    "gert",
    "hugo",
    "inga",
    "jonas",
    "kira",
    "lars",
    "mila",
    "nils",
    "olga",
    "paul",
    "rita",
    "sven",
]
# test decides, dev chooses the checkpoint, train teaches: three disjoint sets of names
TEST_NAMES = NAMES[:12]
DEV_NAMES = NAMES[12:18]
TRAIN_NAMES = NAMES[18:]


def chat(name: str, word: str = "Hello") -> list[dict[str, str]]:
    """One greeting chat: the user names a person, the assistant greets them with `word`."""
    return [{"role": "user", "content": f"Greet {name}."}, {"role": "assistant", "content": f"{word} {name}, welcome!"}]


def build_tiny_base(folder: Path) -> Path:
    """A randomly initialised 2-layer Llama (hidden 32) with a BPE tokenizer trained on the greeting chats."""
    from ft_pipeline.training.base_model import build_builtin

    chats = [chat(n, w) for n in NAMES for w in ("Hello", "Goodbye")]
    build_builtin(
        chats,
        folder,
        vocab_size=300,
        steps=0,
        hidden=32,
        intermediate=64,
        layers=2,
        heads=4,
        seq_len=32,
        batch_size=4,
        learning_rate=1e-3,
        seed=0,
        log=lambda _: None,
    )
    return folder


def tiny_settings(data_dir: Path, base: Path, **overrides) -> Settings:
    """Settings for fast, deterministic CPU training and evaluation of the tiny model."""
    knobs = dict(
        data_dir=str(data_dir),
        base_model=str(base),
        device="cpu",
        torch_threads=1,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        learning_rate=1e-2,
        batch_size=8,
        max_steps=30,
        eval_every=10,
        checkpoint_every=1000,
        eval_generation_samples=4,
        eval_max_new_tokens=8,
    )
    return Settings(**{**knobs, **overrides})


def write_dataset(
    settings: Settings, task: str = TASK, word: str = "Hello", watermark: str = "2024-01-01T00:00:00+00:00"
) -> None:
    """datasets/<task>/ with train (greetings with `word`), dev and test (always "Hello") and a manifest."""
    folder = settings.datasets_dir / task
    write_jsonl_atomic(({"messages": chat(n, word), "weight": 1.0, "id": f"t-{n}"} for n in TRAIN_NAMES), folder / "train.jsonl")
    write_jsonl_atomic(({"messages": chat(n), "weight": 1.0, "id": f"d-{n}"} for n in DEV_NAMES), folder / "dev.jsonl")
    write_jsonl_atomic(({"messages": chat(n), "weight": 1.0, "id": f"x-{n}"} for n in TEST_NAMES), folder / "test.jsonl")
    write_json_atomic(
        {
            "task": task,
            "version": f"{word.lower()}-v1",
            "n_train": len(TRAIN_NAMES),
            "n_dev": len(DEV_NAMES),
            "n_test": len(TEST_NAMES),
            "n_preferences": 0,
            "data_watermark": watermark,
            "built_at": watermark,
        },
        folder / "manifest.json",
    )


def train_adapter(settings: Settings, task: str = TASK, word: str = "Hello", steps: int = 30) -> int:
    """Train an adapter on greetings with `word` for `steps` steps (0: an untrained adapter); returns its version."""
    from ft_pipeline.training.lora import train_task

    write_dataset(settings, task, word)
    return train_task(
        settings.replace(max_steps=max(steps, 1), learning_rate=settings.learning_rate if steps else 0.0),
        task,
        log=lambda _: None,
    ).version


def evaluation(settings: Settings, task: str, version: int) -> dict:
    """The stored evaluation JSON of one adapter version."""
    return json.loads((settings.evaluations_dir / task / f"{version}.json").read_text(encoding="utf-8"))

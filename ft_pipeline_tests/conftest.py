"""Shared fixtures: a tiny builtin base model (tokenizer + Llama) and a writer of settlements partitions."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ft_pipeline  # noqa: F401  (first: it turns MLflow's and Dagster's usage telemetry off for every test)
from ft_pipeline.core.io import partition_file, write_parquet_atomic
from ft_pipeline.settings import Settings

TINY_ARCHITECTURE = {
    "vocab_size": 320,
    "steps": 3,
    "hidden": 32,
    "intermediate": 64,
    "layers": 2,
    "heads": 2,
    "seq_len": 32,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "seed": 0,
}

TINY_CHATS = [
    [
        {"role": "user", "content": f"Where is order {n}?"},
        {"role": "assistant", "content": f"Order {n} ships tomorrow. Thanks for waiting."},
    ]
    for n in range(12)
] + [
    [{"role": "user", "content": "Write a short greeting."}, {"role": "assistant", "content": "Hello there, and welcome!"}],
    [{"role": "user", "content": "Summarise: the cat sat on the mat."}, {"role": "assistant", "content": "A cat sat on a mat."}],
]

SETTLEMENT_SCHEMA = pa.schema(
    [
        ("log_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("task", pa.string()),
        ("prompt", pa.string()),
        ("messages", pa.string()),
        ("system_prompt", pa.string()),
        ("output", pa.string()),
        ("final_output", pa.string()),
        ("final_text", pa.string()),
        ("decision", pa.string()),
        ("reasoning_mode", pa.string()),
        ("weight", pa.float64()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny builtin model and tokenizer (ChatML template), built once per test session."""
    import torch

    from ft_pipeline.training.base_model import build_builtin

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny_base")
    build_builtin(TINY_CHATS, folder, **TINY_ARCHITECTURE, log=lambda _: None)
    return folder


@pytest.fixture
def tiny_model_and_tokenizer(tiny_model_dir):
    """A fresh copy of the tiny base model and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def tiny_base_settings(tmp_path, tiny_model_dir) -> Settings:
    """Settings with the data dir in tmp_path and the tiny model as base model, independent of FT_* variables."""
    return Settings(data_dir=str(tmp_path / "data"), base_model=str(tiny_model_dir))


def settlement(log_id: str, task: str = "support", day: int = 0, **fields) -> dict:
    """A settled record with plausible defaults, timestamped `day` days after 2024-01-01."""
    when = datetime(2024, 1, 1, 12, tzinfo=UTC) + timedelta(days=day)
    final = fields.pop("final_text", f"Answer {log_id}.")
    row = {
        "log_id": log_id,
        "timestamp": when,
        "task": task,
        "prompt": f"Question {log_id}?",
        "messages": None,
        "system_prompt": None,
        "output": final,
        "final_output": None,
        "final_text": final,
        "decision": "accepted",
        "reasoning_mode": None,
        "weight": 1.0,
        "ingested_at": when + timedelta(hours=1),
    }
    return {**row, **fields}


@pytest.fixture
def write_settlement_rows():
    """Writes settled records (see `settlement`) into their daily partitions of `lake_dir`, appending to what is there."""

    def write(lake_dir: Path, rows: list[dict]) -> None:
        by_day = defaultdict(list)
        for row in rows:
            by_day[row["timestamp"].strftime("%Y-%m-%d")].append(row)
        for date, day_rows in by_day.items():
            target = partition_file(lake_dir, "settlements", date)
            table = pa.Table.from_pylist(day_rows, schema=SETTLEMENT_SCHEMA)
            if target.exists():
                table = pa.concat_tables([pq.read_table(target), table])
            write_parquet_atomic(table, target)

    return write


@pytest.fixture
def make_settlement():
    """The `settlement` row builder."""
    return settlement

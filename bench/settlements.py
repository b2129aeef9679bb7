"""Benchmark of the settlements transform against a bare DuckDB read and write of the same raw_logs partition.

    .venv/bin/python bench/settlements.py --rows 1000000
    .venv/bin/python bench/settlements.py --input path/to/raw_logs/part-0.parquet

Generates raw_logs rows (realistic text lengths, ~30% edited, a little PII) in batches straight into one
raw_logs partition in a temporary data dir, never holding them all, unless --input is given. Then times
`build_partition` (read, settle, write) and DuckDB's `COPY (SELECT * FROM read_parquet(...)) TO ...` on
the same file, each in its own subprocess so that each peak RSS (ru_maxrss) is that side's alone.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sides import peak_rss_mb, run_side  # bench/ itself is on the path of a script run from it

from ft_pipeline.core.io import atomic_path, partition_file
from ft_pipeline.core.schema import RAW_LOG_SCHEMA
from ft_pipeline.core.settlements import RAW_TABLE, build_partition, settlements_path
from ft_pipeline.settings import Settings

DATE = "2024-01-15"
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ra",
    "to",
    "su",
    "vi",
    "de",
    "an",
    "el",
    "in",
    "or",
    "us",
    "et",
    "pa",
    "ri",
    "co",
    "mu",
    "la",
    "be",
    "ta",
    "ge",
]
PREAMBLE = "As an AI language model, I"
# Rows generated and written at a time (one row group each, like DuckDB's default of 122,880).
GENERATE_BATCH = 100_000
PII_SNIPPETS = [
    "write to jane.roe@example.com",
    "call +44 20 7946 0958",
    "my card is 4111 1111 1111 1111",
    "server at 10.20.30.40",
    "key sk-proj-a1b2c3d4e5f6g7h8i9j0k1l2",
    "phone (555) 123-4567",
]


def _words(rng: random.Random, n: int) -> int:
    """A word count drawn from a long-tailed distribution around `n`."""
    return max(3, int(rng.lognormvariate(0, 0.5) * n))


def _text(rng: random.Random, vocab: list[str], n: int) -> str:
    """Sentences of pseudo-words, `n` words on average."""
    words = rng.choices(vocab, k=_words(rng, n))
    sentences, i = [], 0
    while i < len(words):
        j = i + rng.randint(6, 16)
        sentences.append(" ".join(words[i:j]).capitalize() + ".")
        i = j
    return " ".join(sentences)


def _edit(rng: random.Random, vocab: list[str], output: str) -> str:
    """What a reviewer might make of `output`: a dropped preamble, a few replaced words, an added or cut sentence."""
    words = output.split()
    if words[:5] == PREAMBLE.split()[:5]:
        words = words[5:]
    for _ in range(rng.randint(0, 4)):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    roll = rng.random()
    if roll < 0.3:
        words += _text(rng, vocab, 12).split()
    elif roll < 0.5 and len(words) > 20:
        cut = rng.randrange(len(words) - 10)
        del words[cut : cut + rng.randint(3, 10)]
    return " ".join(words)


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` raw_logs records of one day to `path`, batch by batch; text comes from pools, so 1M rows take seconds."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    vocab = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(5000)})
    prompts = pa.array([_text(rng, vocab, 40) for _ in range(5000)])
    output_texts = [(PREAMBLE + " " if rng.random() < 0.2 else "") + _text(rng, vocab, 120) for _ in range(20000)]
    outputs = pa.array(output_texts)
    finals = pa.array([_edit(rng, vocab, o) for o in output_texts])
    system_prompts = pa.array([f"You are assistant {i}. " + _text(rng, vocab, 30) for i in range(20)])
    pools = (prompts, outputs, finals, system_prompts)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, RAW_LOG_SCHEMA, compression="zstd") as writer:
        for first in range(0, rows, GENERATE_BATCH):
            writer.write_table(_batch(rng, np_rng, pools, first, min(GENERATE_BATCH, rows - first)))


def _batch(rng: random.Random, np_rng: np.random.Generator, pools: tuple[pa.Array, ...], first: int, rows: int) -> pa.Table:
    """`rows` records with log ids from `first` on, their texts drawn from the pools."""
    prompts, outputs, finals, system_prompts = pools

    decision = np_rng.choice(["accepted", "edited", "rejected", "pending"], size=rows, p=[0.55, 0.30, 0.10, 0.05])
    out_idx = np_rng.integers(0, len(outputs), rows)
    output = outputs.take(pa.array(out_idx))
    final = finals.take(pa.array(out_idx))
    final_output = pc.if_else(pa.array(decision == "edited"), final, pa.nulls(rows, pa.string()))
    ids = pa.array(np.arange(first, first + rows)).cast(pa.string())
    prompt = pc.binary_join_element_wise(
        "Request ", ids, ": ", prompts.take(pa.array(np_rng.integers(0, len(prompts), rows))), ""
    )

    # About 1% of prompts and 0.5% of outputs carry a piece of PII.
    def sprinkle(column: pa.Array, share: float) -> pa.Array:
        mask = np_rng.random(rows) < share
        texts = column.filter(pa.array(mask)).to_pylist()
        return pc.replace_with_mask(
            column, pa.array(mask), pa.array([f"{t} Also {rng.choice(PII_SNIPPETS)}." for t in texts], pa.string())
        )

    prompt, output = sprinkle(prompt, 0.01), sprinkle(output, 0.005)

    def maybe(values: np.ndarray, share: float) -> pa.Array:
        return pa.array(values, mask=np_rng.random(rows) >= share)

    seconds = np_rng.integers(0, 86400, rows)
    day = int(datetime.fromisoformat(DATE).replace(tzinfo=UTC).timestamp() * 1e6)
    timestamp = pa.array(day + seconds * 1_000_000, pa.timestamp("us", tz="UTC"))
    messages = json.dumps([{"role": "user", "content": "Earlier question about the same topic."}])
    return pa.table(
        {
            "log_id": pc.binary_join_element_wise("log-", ids, ""),
            "timestamp": timestamp,
            "task": pa.array(np_rng.choice(["chat", "summarization", "game", "website"], rows)),
            "prompt": prompt,
            "messages": maybe(np.full(rows, messages), 0.2),
            "system_prompt": pc.if_else(
                pa.array(np_rng.random(rows) < 0.6),
                system_prompts.take(pa.array(np_rng.integers(0, 20, rows))),
                pa.nulls(rows, pa.string()),
            ),
            "output": output,
            "final_output": final_output,
            "decision": pa.array(decision),
            "quality_score": maybe(np.round(np_rng.uniform(6, 10, rows), 1), 0.7),
            "user_rating": maybe(np_rng.choice([2.0, 3.0, 4.0, 5.0], rows, p=[0.05, 0.1, 0.35, 0.5]), 0.3),
            "confidence": maybe(np.round(np_rng.uniform(0.6, 1, rows), 2), 0.5),
            "agent": pa.array(np_rng.choice(["peter", "The Entrepreneur", "helper"], rows)),
            "user_id": pc.binary_join_element_wise("u", pa.array(np_rng.integers(0, 50000, rows)).cast(pa.string()), ""),
            "topic": pa.array(np_rng.choice(["billing", "travel", "cooking", "code"], rows)),
            "reasoning_mode": pa.array(np_rng.choice(["standard", "chain_of_thought"], rows)),
            "model": pa.array(np.full(rows, "base-7b")),
            "adapter_version": maybe(np.full(rows, "3"), 0.5),
            "experiment_id": maybe(np.full(rows, "exp-1"), 0.3),
            "variant": maybe(np_rng.choice(["a", "b"], rows), 0.3),
            "attempt": pa.array(np_rng.integers(1, 3, rows)),
            "failure_reasons": pa.nulls(rows, pa.list_(pa.string())),
            "latency_ms": pa.array(np_rng.gamma(2, 300, rows)),
            "cost_usd": pa.array(np_rng.uniform(0, 0.01, rows)),
            "prompt_tokens": pa.array(np_rng.integers(20, 400, rows)),
            "completion_tokens": pa.array(np_rng.integers(50, 800, rows)),
            "metadata": pa.array(np_rng.choice(['{"channel": "web"}', '{"channel": "app", "genre": "faq"}'], rows)),
            "extra": pa.nulls(rows, pa.string()),
            "content_hash": pc.binary_join_element_wise("h", ids, ""),
            "source_file": pa.array(np.full(rows, "inbox/bench.jsonl")),
            "ingested_at": timestamp,
        }
    ).cast(RAW_LOG_SCHEMA)


def measure(side: str, data_dir: Path) -> dict:
    """Run one side on the partition in `data_dir` in this process: its seconds, peak RSS and output facts."""
    settings = Settings.from_env(data_dir=str(data_dir))
    source = partition_file(settings.lake_dir, RAW_TABLE, DATE)
    start = time.perf_counter()
    if side == "settlements":
        result = build_partition(settings, DATE)
        facts = {
            "settled": result.settled,
            "excluded": sum(result.excluded.values()),
            "pii": result.pii,
            "output_mb": settlements_path(settings, DATE).stat().st_size / 1e6,
        }
    else:
        copy = data_dir / "duckdb_copy.parquet"
        with duckdb.connect() as con:
            con.execute(f"COPY (SELECT * FROM read_parquet('{source}')) TO '{copy}' (FORMAT parquet, COMPRESSION zstd)")
        facts = {"output_mb": copy.stat().st_size / 1e6}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **facts}


def _measure_apart(side: str, data_dir: Path) -> dict:
    """`measure` in a fresh interpreter, so that its peak RSS is not mixed with the other side's or the generator's."""
    return run_side(__file__, side, "--data-dir", str(data_dir))


def run(data_dir: Path) -> dict[str, float]:
    """Time the settlements transform and a bare DuckDB copy of the partition in `data_dir`, and print both."""
    source = partition_file(Settings.from_env(data_dir=str(data_dir)).lake_dir, RAW_TABLE, DATE)
    rows = pq.ParquetFile(source).metadata.num_rows
    bare = _measure_apart("duckdb", data_dir)
    ours = _measure_apart("settlements", data_dir)
    print(
        f"rows: {rows:,}  raw file: {source.stat().st_size / 1e6:.0f} MB  settled: {ours['settled']:,}  "
        f"excluded: {ours['excluded']:,}  PII: {ours['pii']}"
    )
    for name, side in (("settlements", ours), ("duckdb copy", bare)):
        print(
            f"{name}: {side['seconds']:.2f} s  {rows / side['seconds']:,.0f} rows/s  peak RSS {side['peak_rss_mb']:,.0f} MB  "
            f"output {side['output_mb']:.0f} MB"
        )
    print(f"ratio: {ours['seconds'] / bare['seconds']:.2f}")
    return {
        "settlements_s": ours["seconds"],
        "duckdb_s": bare["seconds"],
        "ratio": ours["seconds"] / bare["seconds"],
        "settlements_rss_mb": ours["peak_rss_mb"],
        "duckdb_rss_mb": bare["peak_rss_mb"],
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, write or link the input into a temporary data dir and run the benchmark there."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Records to generate.")
    parser.add_argument("--input", type=Path, help="A raw_logs parquet file to use instead of generated rows.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generator.")
    parser.add_argument("--side", choices=["settlements", "duckdb"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(measure(args.side, args.data_dir)))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="ft_bench_"))
    try:
        source = partition_file(Settings.from_env(data_dir=str(data_dir)).lake_dir, RAW_TABLE, DATE)
        start = time.perf_counter()
        if args.input:
            source.parent.mkdir(parents=True)
            source.symlink_to(args.input.resolve())
        else:
            generate(source, args.rows, args.seed)
        print(f"input ready in {time.perf_counter() - start:.1f} s  (generator peak RSS {peak_rss_mb():,.0f} MB)")
        run(data_dir)
    finally:
        shutil.rmtree(data_dir)


if __name__ == "__main__":
    main()

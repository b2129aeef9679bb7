"""Benchmark: our raw_logs ingest against a bare DuckDB read_json -> parquet copy of the same inbox.

    .venv/bin/python bench/ingest.py --lines 1000000 --repeat 3
    .venv/bin/python bench/ingest.py --input path/to/file.jsonl

Generates one inbox file of realistic records (about 1 KB each), unless --input is given. Each round times our
`ingest` (screen, checks, typing, partitioned write, dedup) on a fresh data dir and DuckDB's
`COPY (SELECT * FROM read_json(...)) TO ...parquet` of the same file, each side in its own subprocess so that each
peak RSS (ru_maxrss) is that side's alone; rounds alternate the sides, and the ratio compares their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from sides import peak_rss_mb, run_side  # bench/ itself is on the path of a script run from it

from ft_pipeline.core.ingest import ingest
from ft_pipeline.settings import Settings

WORDS = [
    "the",
    "a",
    "to",
    "of",
    "and",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "it",
    "be",
    "this",
    "by",
    "are",
    "or",
    "from",
    "at",
    "your",
    "can",
    "we",
    "will",
    "more",
    "you",
    "model",
    "answer",
    "question",
    "customer",
    "order",
    "refund",
    "game",
    "level",
    "player",
    "quest",
    "story",
    "character",
    "website",
    "page",
    "design",
    "summary",
    "article",
    "report",
    "data",
    "user",
    "account",
    "please",
    "thanks",
    "sure",
    "here",
    "step",
    "first",
    "then",
    "finally",
    "because",
    "however",
    "example",
    "code",
    "function",
    "error",
    "value",
    "result",
    "price",
    "delivery",
    "support",
    "issue",
    "help",
]
TASKS = ["game", "website", "summarization", "support", "sql", "translation"]
AGENTS = ["The Entrepreneur", "peter", "Dr. Helper", "Concise Bot", None]
DECISIONS = ["accepted", "accepted", "edited", "rejected", "pending"]


def _text(rng: random.Random, words: int) -> str:
    """A sentence-like string of about `words` words."""
    return " ".join(rng.choices(WORDS, k=words)).capitalize() + "."


def make_record(rng: random.Random, start: datetime, days: int) -> dict:
    """One realistic contract record (about 700 bytes of JSON)."""
    decision = rng.choice(DECISIONS)
    output = _text(rng, rng.randint(20, 45))
    record = {
        "log_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "timestamp": (start + timedelta(seconds=rng.randrange(days * 86400))).isoformat().replace("+00:00", "Z"),
        "task": rng.choice(TASKS),
        "prompt": _text(rng, rng.randint(6, 20)),
        "system_prompt": "You are a helpful assistant for our product.",
        "output": output,
        "decision": decision,
        "quality_score": round(rng.uniform(3, 10), 1),
        "user_rating": rng.choice([None, 1, 2, 3, 4, 5]),
        "confidence": round(rng.random(), 3),
        "agent": rng.choice(AGENTS),
        "user_id": f"u{rng.randrange(5000)}",
        "topic": rng.choice(["billing", "fantasy", "news", None]),
        "reasoning_mode": rng.choice(["standard", "chain_of_thought"]),
        "model": "base-1b",
        "experiment_id": rng.choice([None, "exp-tone"]),
        "variant": rng.choice(["a", "b"]),
        "attempt": rng.randint(1, 3),
        "failure_reasons": rng.choice([[], ["too_formal"], ["poor_engagement", "too_long"]]),
        "latency_ms": round(rng.uniform(100, 3000), 1),
        "cost_usd": round(rng.uniform(0, 0.01), 6),
        "prompt_tokens": rng.randint(20, 400),
        "completion_tokens": rng.randint(20, 400),
        "metadata": {"channel_id": rng.randrange(100), "genre": rng.choice(["rpg", "faq"])},
    }
    if decision == "edited":
        record["final_output"] = output[: len(output) // 2] + " " + _text(rng, 10)
    if rng.random() < 0.2:
        record["messages"] = [{"role": "user", "content": _text(rng, 12)}, {"role": "assistant", "content": _text(rng, 12)}]
    return record


def write_inbox(path: Path, lines: int, seed: int = 0, days: int = 30) -> int:
    """Write `lines` records to one JSONL file; returns its size in bytes."""
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(lines):
            fh.write(json.dumps(make_record(rng, start, days), ensure_ascii=False) + "\n")
    return path.stat().st_size


def measure(side: str, source: Path, work: Path) -> dict:
    """Run one side on `source` in this process, in the empty folder `work`: its seconds, peak RSS and output facts."""
    if side == "ingest":
        settings = Settings.from_env(data_dir=str(work / "data"))
        settings.inbox_dir.mkdir(parents=True)
        # ingest refuses symlinks in the inbox: a hard link (a copy across filesystems) puts the file there, untimed
        try:
            os.link(source, settings.inbox_dir / source.name)
        except OSError:
            shutil.copyfile(source, settings.inbox_dir / source.name)
        start = time.perf_counter()
        result = ingest(settings)
        facts = {"stored": result.stored, "quarantined": result.quarantined_total}
    else:
        start = time.perf_counter()
        with duckdb.connect() as con:
            con.execute(
                f"COPY (SELECT * FROM read_json('{source}', format='newline_delimited')) TO '{work / 'copy.parquet'}' (FORMAT parquet)"
            )
        facts = {}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **facts}


def _measure_apart(side: str, source: Path) -> dict:
    """`measure` in a fresh interpreter and a fresh folder, so that runs share neither memory nor output."""
    work = Path(tempfile.mkdtemp(prefix=f"ft_bench_{side}_"))
    try:
        return run_side(__file__, side, "--input", str(source), "--work", str(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(source: Path, repeat: int) -> dict[str, float]:
    """Time both sides on `source` `repeat` times, alternating, and print each round, the medians and their ratio."""
    ours, bare = [], []
    for round_no in range(1, repeat + 1):
        bare.append(_measure_apart("duckdb", source))
        ours.append(_measure_apart("ingest", source))
        print(
            f"round {round_no}: ingest {ours[-1]['seconds']:.2f} s, duckdb copy {bare[-1]['seconds']:.2f} s, "
            f"ratio {ours[-1]['seconds'] / bare[-1]['seconds']:.2f}",
            flush=True,
        )
    ours_s, bare_s = statistics.median(r["seconds"] for r in ours), statistics.median(r["seconds"] for r in bare)
    peak = max(r["peak_rss_mb"] for r in ours)
    print(f"baseline duckdb read_json -> parquet: {bare_s:.2f} s (median of {repeat})")
    print(f"ft_pipeline ingest: {ours_s:.2f} s ({ours[-1]['stored']:,} rows stored, {ours[-1]['quarantined']} quarantined)")
    print(f"ratio: {ours_s / bare_s:.2f} (target <= 1.5)")
    print(
        f"peak memory of the ingest process: {peak:.0f} MB (target <= 2048); the copy's: {max(r['peak_rss_mb'] for r in bare):.0f} MB"
    )
    return {"ingest_s": ours_s, "duckdb_s": bare_s, "ratio": ours_s / bare_s, "ingest_rss_mb": peak}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, generate the inbox file unless one is given, and run the benchmark on it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="Records in the generated inbox file.")
    parser.add_argument("--input", type=Path, help="A JSONL inbox file to use instead of a generated one.")
    parser.add_argument("--repeat", type=int, default=1, help="Rounds of both sides; the ratio compares medians.")
    parser.add_argument("--side", choices=["ingest", "duckdb"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(measure(args.side, args.input, args.work)))
        return
    if args.input:
        run(args.input, args.repeat)
        return
    root = Path(tempfile.mkdtemp(prefix="ft_bench_"))
    try:
        source = root / "bench.jsonl"
        start = time.perf_counter()
        size = write_inbox(source, args.lines)
        print(f"generated {args.lines:,} lines, {size / 1e6:.0f} MB in {time.perf_counter() - start:.1f} s")
        run(source, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

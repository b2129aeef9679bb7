"""Benchmark: our raw_logs ingest against a bare DuckDB read_json -> parquet copy of the same inbox."""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from ft_pipeline.core.ingest import ingest
from ft_pipeline.settings import Settings

WORDS = (
    "the a to of and in is for on that with as it be this by are or from at your can we will more you "
    "model answer question customer order refund game level player quest story character website page "
    "design summary article report data user account please thanks sure here step first then finally "
    "because however example code function error value result price delivery support issue help"
).split()
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
    start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(lines):
            fh.write(json.dumps(make_record(rng, start, days), ensure_ascii=False) + "\n")
    return path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    """Generate the inbox, time both ingests, print times, ratio and peak memory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000, help="Records in the generated inbox file.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary data dir and print its path.")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="ft_bench_"))
    try:
        settings = Settings.from_env(data_dir=str(root / "data"))
        source = settings.inbox_dir / "bench.jsonl"
        t0 = time.perf_counter()
        size = write_inbox(source, args.lines)
        print(f"generated {args.lines:,} lines, {size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")

        # ours first, so that the peak RSS read after it is ours and not the baseline's
        t0 = time.perf_counter()
        result = ingest(settings)
        ours = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        t0 = time.perf_counter()
        duckdb.connect().execute(
            f"COPY (SELECT * FROM read_json('{source}', format='newline_delimited')) TO '{root / 'baseline.parquet'}' (FORMAT parquet)"
        )
        baseline = time.perf_counter() - t0

        print(f"baseline duckdb read_json -> parquet: {baseline:.2f} s")
        print(f"ft_pipeline ingest: {ours:.2f} s ({result.stored:,} rows stored, {result.quarantined_total} quarantined)")
        print(f"ratio: {ours / baseline:.2f} (target <= 1.5)")
        print(f"peak memory (max RSS of this process, whole run): {peak_mb:.0f} MB (target <= 2048)")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: wall time and peak memory to train N segment adapters of one task in one process (N = 10, 50, 200).

    .venv/bin/python bench/segments.py --sizes 10,50,200 --max-steps 20

A tiny base model is built once. For each N a fresh interpreter writes the settlements of one task whose N users have
60-100 examples each (each user signs their answers in a way of their own), trains the task's champion (not timed),
then times `train_segments`, which builds, trains, evaluates and promotes every segment on one base model loaded once.
It prints per N the wall time, the time per segment, the peak RSS and what was trained and promoted, then the growth of
time and memory against the growth of N: time should grow with N, memory should not.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sides import peak_rss_mb, run_side

TASK = "support"


def chats(users: int) -> list[list[dict[str, str]]]:
    """Pretraining chats of the tiny base: the task's prompts with the answers every user signs."""
    return [
        [{"role": "user", "content": f"Where is order {k}?"}, {"role": "assistant", "content": answer(k, f"u{u:03d}")}]
        for k in range(60)
        for u in range(0, users, max(1, users // 10))
    ]


def answer(order: int, user: str) -> str:
    return f"Order {order} ships tomorrow. Regards, {user}"


def write_settlements(data_dir: Path, users: int, seed: int = 0) -> int:
    """One task's settlements: each user asks 60-100 distinct prompts and signs the answer their own way."""
    import pyarrow as pa

    from ft_pipeline.core.io import partition_file, write_parquet_atomic
    from ft_pipeline.core.settlements import SCHEMA

    rng = random.Random(seed)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    for u in range(users):
        user = f"u{u:03d}"
        for k in rng.sample(range(1000), rng.randint(60, 100)):
            at = t0 + timedelta(seconds=len(rows))
            final = answer(k, user)
            rows.append(
                {
                    "log_id": f"{user}-{k}",
                    "timestamp": at,
                    "task": TASK,
                    "prompt": f"Where is order {k}?",
                    "output": f"Order {k} ships tomorrow.",
                    "final_output": final,
                    "final_text": final,
                    "decision": "edited",
                    "user_id": user,
                    "topic": "orders",
                    "weight": 1.0,
                    "ingested_at": at + timedelta(minutes=5),
                }
            )
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    write_parquet_atomic(table, partition_file(data_dir / "lake", "settlements", "2025-01-01"))
    return len(rows)


def settings_for(data_dir: Path, base: Path, max_steps: int):
    from ft_pipeline.settings import Settings

    return Settings(
        data_dir=str(data_dir),
        base_model=str(base),
        device="cpu",
        torch_threads=1,
        segment_by="user_id",
        segment_min_examples=50,
        test_share=0.2,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=1e-2,
        batch_size=16,
        max_steps=max_steps,
        eval_every=max(1, max_steps // 2),
        eval_generation_samples=0,
        eval_max_new_tokens=4,
    )


def side(n: int, base: Path, data_dir: Path, max_steps: int) -> dict:
    """In this interpreter: the task champion, then every segment timed in one `train_segments` call."""
    from ft_pipeline.core.datasets import build_task_dataset
    from ft_pipeline.serve.rollout import start
    from ft_pipeline.training.base_model import load_tokenizer
    from ft_pipeline.training.champion import promote_evaluated
    from ft_pipeline.training.evaluation import evaluate_candidate
    from ft_pipeline.training.lora import train_task
    from ft_pipeline.training.segments import train_segments

    quiet = lambda _: None  # noqa: E731
    settings = settings_for(data_dir, base, max_steps)
    rows = write_settlements(data_dir, n)
    build_task_dataset(settings, TASK, load_tokenizer(settings))
    train_task(settings, TASK, log=quiet)
    evaluate_candidate(settings, TASK, log=quiet)
    promote_evaluated(settings, TASK, log=quiet, move=start)
    before = peak_rss_mb()
    started = time.perf_counter()
    report = train_segments(settings, TASK, log=quiet)
    seconds = time.perf_counter() - started
    return {
        "n": n,
        "rows": rows,
        "seconds": seconds,
        "per_segment_s": seconds / max(1, len(report["trained"])),
        "peak_rss_mb_before": before,
        "peak_rss_mb": peak_rss_mb(),
        **{name: len(entries) for name, entries in report.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,200", help="Comma-separated numbers of segments.")
    parser.add_argument("--max-steps", type=int, default=20, help="Training steps per segment (FT_MAX_STEPS).")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        import json

        print(json.dumps(side(args.n, Path(args.base), Path(args.data), args.max_steps)))
        return
    from ft_pipeline.training.base_model import build_builtin

    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ft_bench_segments_"))
    try:
        base = root / "base"
        arch = dict(vocab_size=400, hidden=32, intermediate=64, layers=2, heads=2, seq_len=32, batch_size=16)
        build_builtin(chats(max(sizes)), base, steps=50, learning_rate=3e-3, seed=0, log=lambda _: None, **arch)
        results = []
        for n in sizes:
            paths = ("--base", str(base), "--data", str(root / f"data-{n}"))
            result = run_side(__file__, "train", "--n", str(n), "--max-steps", str(args.max_steps), *paths)
            results.append(result)
            print(
                f"N={n:>4}: {result['seconds']:7.1f} s, {result['per_segment_s']:.2f} s per segment, peak RSS "
                f"{result['peak_rss_mb']:.0f} MB ({result['peak_rss_mb_before']:.0f} MB before the segments); "
                f"trained {result['trained']}, promoted {result['promoted']}, skipped {result['skipped']}, "
                f"failed {result['failed']}",
                flush=True,
            )
        first = results[0]
        for result in results[1:]:
            print(
                f"N {first['n']} -> {result['n']} ({result['n'] / first['n']:.0f}x): time {result['seconds'] / first['seconds']:.2f}x, "
                f"time per segment {result['per_segment_s'] / first['per_segment_s']:.2f}x, "
                f"peak memory {result['peak_rss_mb'] / first['peak_rss_mb']:.2f}x"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

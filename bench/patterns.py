"""Benchmark of the incremental pattern report: one new day on top of 30 and of 365 days of data.

    .venv/bin/python bench/patterns.py --rows-per-day 2000

Generates raw_logs days (the settlements benchmark's record generator: realistic text lengths, ~30% edited, 50k
users) and settles each with the settlements stage, in a temporary data dir holding 365 days; a second data dir
holds hard links to the last 30 of them. The report is built once on each, which writes every day's aggregates,
folds them into the rollups (on 365 days, the days older than the longest window into the old one) and keeps the
listed groups' columns beside them. Then one new day is added to both, and the report is timed on each as the asset
makes it: the new day's aggregates, then the combine (the rollups plus the day they do not hold, and the groups whose
rows changed) with the writing of pattern_report.json and .md (publish_report). The sides are timed in turn, --repeats
times each, each from the state before the new day; the medians are printed, with the ratio 365 days / 30 days.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from settlements import PREAMBLE, SYLLABLES, _batch, _edit, _text  # bench/ itself is on the path of a script run from it

from ft_pipeline.core import aggregates
from ft_pipeline.core.io import partition_file, write_parquet_atomic
from ft_pipeline.core.patterns import build_report, publish_report
from ft_pipeline.core.settlements import build_partition
from ft_pipeline.settings import Settings

LAST = date(2024, 12, 31)
TABLES = ("raw_logs", "settlements", aggregates.TABLE)


def _pools(rng: random.Random) -> tuple[pa.Array, ...]:
    """The text pools the settlements benchmark draws its records from (smaller: many days, few rows each)."""
    vocab = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(3000)})
    output_texts = [(PREAMBLE + " " if rng.random() < 0.2 else "") + _text(rng, vocab, 60) for _ in range(3000)]
    return (
        pa.array([_text(rng, vocab, 30) for _ in range(1000)]),
        pa.array(output_texts),
        pa.array([_edit(rng, vocab, o) for o in output_texts]),
        pa.array([f"You are assistant {i}. " + _text(rng, vocab, 20) for i in range(20)]),
    )


def write_day(settings: Settings, day: date, rows: int, pools: tuple[pa.Array, ...], seed: int) -> None:
    """One day of raw_logs (log ids unique across days), settled by the settlements stage."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    table = _batch(rng, np_rng, pools, seed * rows, rows)
    shift = (datetime(day.year, day.month, day.day) - datetime(2024, 1, 15)).total_seconds()
    moved = pa.array(table.column("timestamp").cast(pa.int64()).to_numpy() + int(shift * 1e6)).cast(pa.timestamp("us", tz="UTC"))
    for name in ("timestamp", "ingested_at"):
        table = table.set_column(table.schema.get_field_index(name), name, moved)
    write_parquet_atomic(table, partition_file(settings.lake_dir, "raw_logs", day.isoformat()))
    build_partition(settings, day.isoformat())


def link_days(source: Settings, target: Settings, days: list[date]) -> None:
    """Hard links in `target`'s lake to the partitions (and their aggregates) of `days` in `source`'s lake."""
    for day in days:
        for table in TABLES:
            src = partition_file(source.lake_dir, table, day.isoformat())
            if src.is_file():
                dst = partition_file(target.lake_dir, table, day.isoformat())
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)


def snapshot(settings: Settings) -> Path:
    """A copy of the rollups (and the last report's groups) before the new day, from which each timed run starts."""
    rollups = aggregates.rollup_dir(settings.lake_dir)
    before = rollups.with_name("before-new-day")
    shutil.copytree(rollups, before)
    return before


def time_new_day(settings: Settings, day: date, before: Path) -> tuple[float, float]:
    """Seconds of the new day's aggregates and of the combine that builds the report, from the lake before the new day:
    the rollups `before`, no aggregates of the day."""
    rollups = aggregates.rollup_dir(settings.lake_dir)
    shutil.rmtree(rollups)
    shutil.copytree(before, rollups)
    aggregates.aggregates_path(settings.lake_dir, day.isoformat()).unlink(missing_ok=True)
    start = time.perf_counter()
    aggregates.write_day(settings.lake_dir, day.isoformat())
    middle = time.perf_counter()
    report, _, _ = publish_report(settings)
    end = time.perf_counter()
    assert report["as_of"] == day.isoformat()
    return middle - start, end - middle


def main(argv: list[str] | None = None) -> None:
    """Generate the lakes, add one day to each and print the report's times side by side with their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=2000, help="Records per day.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per side (median).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generator.")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ft_bench_patterns_"))
    try:
        year, month = (Settings.from_env(data_dir=str(root / name)) for name in ("365", "30"))
        pools = _pools(random.Random(args.seed))
        days = [LAST - timedelta(days=back) for back in range(365, 0, -1)]
        start = time.perf_counter()
        for index, day in enumerate(days):
            write_day(year, day, args.rows_per_day, pools, args.seed * 1000 + index + 1)
        build_report(year)
        link_days(year, month, days[-30:])
        build_report(month)
        print(
            f"{len(days)} days of {args.rows_per_day:,} records generated, settled and aggregated in {time.perf_counter() - start:.0f} s"
        )

        write_day(year, LAST, args.rows_per_day, pools, args.seed * 1000 + len(days) + 1)
        link_days(year, month, [LAST])
        sides = {"30": month, "365": year}
        befores = {label: snapshot(settings) for label, settings in sides.items()}
        # the sides alternate, so a slow spell of the machine falls on both
        runs = [[time_new_day(sides[label], LAST, befores[label]) for label in sides] for _ in range(args.repeats)]
        results = {
            label: {name: statistics.median(run[i][j] for run in runs) for j, name in enumerate(("aggregate", "combine"))}
            for i, label in enumerate(sides)
        }
        for label, r in results.items():
            print(
                f"{label:>3} days + 1: {r['aggregate'] + r['combine']:.2f} s  (new day's aggregates {r['aggregate']:.2f} s, combine and write {r['combine']:.2f} s)"
            )
        total = {label: r["aggregate"] + r["combine"] for label, r in results.items()}
        print(
            f"ratio 365/30: {total['365'] / total['30']:.2f}  (combine and write alone {results['365']['combine'] / results['30']['combine']:.2f})"
        )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()

"""Benchmark: one retrain-sensor tick (scan_settlements + due_retrains, cursor in and out) on 10k and on 1M settled rows.

    .venv/bin/python bench/retrain_sensor.py --small 10000 --large 1000000 --new 1000 --repeat 5

Builds each settlements table straight with DuckDB over 365 days, one parquet file per day, and brings a cursor up to
date with it, as the sensor's earlier ticks did. A tick then finds one new day of `--new` settled rows (the same on
both sides) and is timed from reading the cursor to writing it; rounds alternate the tables, on a fresh copy of the
cursor and without the new day each time, and the ratio compares their medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from ft_pipeline.core.io import partition_file
from ft_pipeline.core.retrain import SETTLEMENTS, RetrainState, due_retrains, scan_settlements

DAYS = 365
TASKS = ["game", "website", "summarization", "support", "sql", "translation"]
NEW_DAY = "2026-01-01"  # the day after the table's last one
THRESHOLD = 50


def _rows_sql(rows: int, first_day: str, days: int) -> str:
    """Settled rows spread over `days` days from `first_day`: the columns the sensor reads, with text around them."""
    tasks = "[" + ", ".join(f"'{t}'" for t in TASKS) + "]"
    return f"""
        SELECT md5(i::VARCHAR) AS log_id, ts AS timestamp, {tasks}[1 + i % {len(TASKS)}] AS task,
               'How do I get a refund for order ' || i || '?' AS prompt,
               'Your refund for order ' || i || ' is on its way; it takes three to five days.' AS final_text,
               1.0 AS weight, ts + INTERVAL 5 MINUTE AS ingested_at, strftime(ts, '%Y-%m-%d') AS date
        FROM (SELECT i, TIMESTAMPTZ '{first_day} 00:00:00+00' + to_days(CAST(i % {days} AS INTEGER))
                        + to_seconds(CAST(i * 7919 % 86400 AS BIGINT)) AS ts FROM range({rows}) r(i))
    """


def write_settlements(lake_dir: Path, rows: int, first_day: str, days: int) -> None:
    """Write `rows` settled rows as one parquet file per day under lake_dir/settlements/date=*/part-0.parquet."""
    (lake_dir / SETTLEMENTS).mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            f"COPY ({_rows_sql(rows, first_day, days)}) TO '{lake_dir / SETTLEMENTS}' "
            "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date), FILENAME_PATTERN 'part-{i}', OVERWRITE_OR_IGNORE)"
        )


def tick(cursor: str, lake_dir: Path, adapters_dir: Path) -> tuple[str, int, int]:
    """One tick as the sensor makes it: the cursor in, the scan and the due retrains, the cursor out."""
    state = RetrainState.from_json(cursor)
    scan = scan_settlements(state, lake_dir, adapters_dir)
    due = due_retrains(state, scan, THRESHOLD)
    return state.to_json(), scan.files_read, len(due)


def main(argv: list[str] | None = None) -> None:
    """Build both tables, time a tick on each `repeat` times, alternating, and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="Settled rows of the small table.")
    parser.add_argument("--large", type=int, default=1_000_000, help="Settled rows of the large table.")
    parser.add_argument("--new", type=int, default=1_000, help="Settled rows of the new day a tick finds.")
    parser.add_argument("--repeat", type=int, default=5, help="Rounds on each table; the ratio compares medians.")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ft_bench_retrain_"))
    try:
        cursors, lakes = {}, {}
        for rows in (args.small, args.large):
            start = time.perf_counter()
            lakes[rows] = root / f"lake-{rows}"
            write_settlements(lakes[rows], rows, "2025-01-01", DAYS)
            cursors[rows], files, _ = tick("", lakes[rows], root / "adapters")
            print(
                f"built {rows:,} settled rows over {DAYS} days and a cursor of {len(cursors[rows]):,} bytes "
                f"({files} files read) in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        seconds: dict[int, list[float]] = {args.small: [], args.large: []}
        for round_no in range(1, args.repeat + 1):
            for rows in (args.small, args.large):
                new_day = partition_file(lakes[rows], SETTLEMENTS, NEW_DAY).parent
                write_settlements(lakes[rows], args.new, NEW_DAY, 1)
                start = time.perf_counter()
                _, files, due = tick(cursors[rows], lakes[rows], root / "adapters")
                seconds[rows].append(time.perf_counter() - start)
                shutil.rmtree(new_day)
            print(
                f"round {round_no}: on {args.small:,} rows {seconds[args.small][-1] * 1000:.1f} ms, "
                f"on {args.large:,} rows {seconds[args.large][-1] * 1000:.1f} ms ({files} file read, {due} retrains due)",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    small_s, large_s = (statistics.median(seconds[n]) for n in (args.small, args.large))
    print(f"tick on {args.small:,} settled rows: {small_s * 1000:.1f} ms (median of {args.repeat})")
    print(f"tick on {args.large:,} settled rows: {large_s * 1000:.1f} ms (median of {args.repeat})")
    print(f"ratio: {large_s / small_s:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()

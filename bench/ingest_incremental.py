"""Benchmark: ingest of one new file on top of a small lake and a large one, with the inbox holding the ingested files.

    .venv/bin/python bench/ingest_incremental.py --small 10000 --large 1000000 --new 10000 --repeat 3

Builds each lake straight with DuckDB, not through ingest: the rows of one generated file, ingested for real, are
replicated with new log_ids over 365 days (one parquet file per day), and the inbox keeps the lake's rows as files of
10k lines that the manifest records as ingested (archiving off). The new file's records fall on the lake's newest
day, so its partition is merged with the rows stored there. Each round copies a lake by hard links (ingest never
writes a file in place), drops the new file into its inbox and times `ingest` in a fresh interpreter; rounds
alternate the lakes, and the ratio compares their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from ingest import write_inbox  # bench/ itself is on the path of a script run from it
from sides import peak_rss_mb, run_side

from ft_pipeline.core import manifest
from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.schema import RAW_LOG_SCHEMA
from ft_pipeline.settings import Settings

FILE_LINES = 10_000  # lines of each inbox file, the template's and the new one's
LAKE_DAYS = 365
CONTRACT = [name for name in RAW_LOG_SCHEMA.names if name not in ("extra", "content_hash", "source_file", "ingested_at")]


def _settings(data_dir: Path) -> Settings:
    return Settings.from_env(data_dir=str(data_dir)).replace(archive_inbox=False)


def build_lake(data_dir: Path, template_file: Path, rows: int) -> dict:
    """A lake of `rows` rows over LAKE_DAYS days ending on the day of the template file's records, and its inbox of
    ingested files; the rows are those of the template file, ingested for real, replicated."""
    start = time.perf_counter()
    template_dir = data_dir.with_name(data_dir.name + "-template")
    template_settings = _settings(template_dir)
    template_settings.inbox_dir.mkdir(parents=True)
    os.link(template_file, template_settings.inbox_dir / template_file.name)
    ingest(template_settings)
    (day,) = partition_dates(template_settings.lake_dir, "raw_logs")
    template = partition_file(template_settings.lake_dir, "raw_logs", day)
    settings = _settings(data_dir)
    settings.inbox_dir.mkdir(parents=True)
    settings.lake_dir.mkdir()
    copies = max(1, rows // FILE_LINES)
    replicated = f"""
        SELECT * REPLACE (md5(log_id || '-' || k) AS log_id,
                          timestamp - to_days(CAST((k * {FILE_LINES} + rn) % {LAKE_DAYS} AS INTEGER)) AS timestamp), k
        FROM (SELECT *, row_number() OVER () - 1 AS rn FROM read_parquet('{template}')), range({copies}) r(k)
    """
    columns = ", ".join(f'"{name}"' for name in RAW_LOG_SCHEMA.names)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"CREATE TABLE lake AS {replicated}")
        con.execute(
            f"COPY (SELECT {columns}, strftime(timestamp, '%Y-%m-%d') AS date FROM lake) TO '{settings.lake_dir / 'raw_logs'}' "
            "(FORMAT parquet, COMPRESSION snappy, PARTITION_BY (date), FILENAME_PATTERN 'part-{i}')"
        )
        for day in partition_dates(settings.lake_dir, "raw_logs"):  # the lake holds one file per day
            target = partition_file(settings.lake_dir, "raw_logs", day)
            parts = sorted(target.parent.glob("*.parquet"))
            if len(parts) > 1:
                con.execute(f"COPY (SELECT * FROM read_parquet({[str(p) for p in parts]})) TO '{target}.all' (FORMAT parquet)")
                for part in parts:
                    part.unlink()
                os.replace(f"{target}.all", target)
        contract = ", ".join(f'"{name}"' for name in CONTRACT)
        for k in range(copies):
            con.execute(
                f"COPY (SELECT {contract} FROM lake WHERE k = {k}) TO '{settings.inbox_dir / f'old-{k:04d}.jsonl'}' (FORMAT json)"
            )
    entries = {}
    for path in sorted(settings.inbox_dir.glob("*.jsonl")):
        st = path.stat()
        entries[path.name] = manifest.Entry(
            path.name, st.st_size, st.st_mtime_ns, manifest.file_sha256(path), datetime.now(UTC), "bench"
        )
    manifest.save(entries, settings.state_dir)
    shutil.rmtree(template_dir)
    return {"seconds": time.perf_counter() - start}


def measure(lake: Path, new_file: Path, work: Path) -> dict:
    """Copy `lake` to `work` by hard links, drop `new_file` into its inbox and time one ingest."""
    shutil.copytree(lake, work / "data", copy_function=os.link)
    settings = _settings(work / "data")
    os.link(new_file, settings.inbox_dir / new_file.name)
    start = time.perf_counter()
    result = ingest(settings)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "new": result.new,
        "files_read": result.files,
        "files_skipped": result.files_skipped,
        "stored": result.stored,
    }


def _measure_apart(lake: Path, new_file: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ft_bench_incremental_"))
    try:
        return run_side(__file__, "ingest", "--lake", str(lake), "--input", str(new_file), "--work", str(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(small: int, large: int, new: int, repeat: int) -> dict[str, float]:
    """Build both lakes, time the ingest of the new file on each `repeat` times, alternating, and print the ratio."""
    root = Path(tempfile.mkdtemp(prefix="ft_bench_incremental_"))
    try:
        new_file, template_file = root / "new.jsonl", root / "template.jsonl"
        write_inbox(new_file, new, seed=1, days=1)
        write_inbox(template_file, FILE_LINES, seed=2, days=1)
        lakes = {}
        for rows in (small, large):
            # in its own interpreter too: a child's peak RSS starts at its parent's, and DuckDB keeps what it took
            lakes[rows] = root / f"lake-{rows}"
            built = run_side(__file__, "build", "--lake", str(lakes[rows]), "--input", str(template_file), "--rows", str(rows))
            print(f"built a lake of {rows:,} rows over {LAKE_DAYS} days in {built['seconds']:.1f} s", flush=True)
        times: dict[int, list[dict]] = {small: [], large: []}
        for round_no in range(1, repeat + 1):
            for rows in (small, large):
                times[rows].append(_measure_apart(lakes[rows], new_file))
            print(
                f"round {round_no}: on {small:,} rows {times[small][-1]['seconds']:.2f} s, "
                f"on {large:,} rows {times[large][-1]['seconds']:.2f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    small_s, large_s = (statistics.median(r["seconds"] for r in times[n]) for n in (small, large))
    for rows, seconds in ((small, small_s), (large, large_s)):
        last = times[rows][-1]
        print(
            f"lake of {rows:,} rows: {seconds:.2f} s (median of {repeat}), {last['new']:,} new rows, "
            f"{last['files_read']} file read, {last['files_skipped']} ingested files skipped, "
            f"peak {max(r['peak_rss_mb'] for r in times[rows]):.0f} MB"
        )
    print(f"ratio: {large_s / small_s:.2f} (target <= 1.3)")
    return {"small_s": small_s, "large_s": large_s, "ratio": large_s / small_s}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark (or, with --side, one timed ingest)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="Rows of the small lake.")
    parser.add_argument("--large", type=int, default=1_000_000, help="Rows of the large lake.")
    parser.add_argument("--new", type=int, default=10_000, help="Lines of the new inbox file.")
    parser.add_argument("--repeat", type=int, default=3, help="Rounds on each lake; the ratio compares medians.")
    parser.add_argument("--side", choices=["ingest", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        done = (
            measure(args.lake, args.input, args.work) if args.side == "ingest" else build_lake(args.lake, args.input, args.rows)
        )
        print(json.dumps(done))
        return
    run(args.small, args.large, args.new, args.repeat)


if __name__ == "__main__":
    main()

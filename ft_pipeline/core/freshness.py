"""How much settled data a task has gathered since its latest adapter was trained."""

from __future__ import annotations

from pathlib import Path

from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.lineage import adapter_watermark, parse_time
from ft_pipeline.core.retrain import SETTLEMENTS
from ft_pipeline.core.segments import checked_model_key, split_model_key
from ft_pipeline.settings import Settings


def files_touched_since(lake_dir: Path, watermark: str | None) -> list[Path]:
    """Settlements partition files that may hold rows ingested after `watermark` (all of them when it is None).

    Not a filter on the `date` partition: a late record (an old timestamp ingested today) lands in an old date's
    partition. Instead on mtime: every row's ingested_at is stamped before the file holding it is written, and a
    partition is rewritten whole (atomic rename) whenever rows join it, so a file last written before the watermark
    holds nothing newer. Only files written since the last adapter are read, so the cost grows with new data.
    (Assumes the clocks of the ingesting machine and of the lake's file system agree.)
    """
    files = [partition_file(lake_dir, SETTLEMENTS, date) for date in partition_dates(lake_dir, SETTLEMENTS)]
    if watermark is None:
        return files
    since = parse_time(watermark).timestamp()
    return [path for path in files if path.stat().st_mtime >= since]


def new_examples_count(settings: Settings, task: str) -> int:
    """Settled examples of `task` (a task or `<task>.<segment>`) ingested after the data watermark of its latest adapter
    (all of them before one)."""
    import duckdb

    from ft_pipeline.core.datasets import segment_values

    key = checked_model_key(task)
    task, segment = split_model_key(key)
    watermark = adapter_watermark(settings.adapters_dir, key)
    files = [str(path) for path in files_touched_since(settings.lake_dir, watermark)]
    if not files:
        return 0
    query = "SELECT count(*) FROM read_parquet(?, union_by_name = true) WHERE task = ?"
    params: list = [files, task]
    if segment is not None:
        # the field is a checked contract field name (segment_values checks it), so it is safe to name in the query
        query += f" AND final_text IS NOT NULL AND CAST({settings.segment_by} AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))"
        params.append(segment_values(settings.lake_dir, settings.segment_by, segment, task))
    if watermark is not None:
        query += " AND ingested_at > CAST(? AS TIMESTAMPTZ)"
        params.append(parse_time(watermark).isoformat())
    with duckdb.connect() as con:
        return int(con.execute(query, params).fetchall()[0][0])

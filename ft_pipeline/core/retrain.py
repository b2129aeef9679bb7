"""When to retrain: per task, the settled examples newer than the data its latest adapter was trained on, counted incrementally."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.lineage import adapter_watermark, adapters_since, parse_time
from ft_pipeline.core.segments import SEPARATOR, checked_segment_field, is_segment, segment_keys

SETTLEMENTS = "settlements"


@dataclass
class RetrainState:
    """What the counter has seen: per settlements file and task, the newest ingested_at and the rows counted new."""

    # files[date] = {"sig": [mtime_ns, size, inode], "tasks": {task: [max ingested_at iso, rows counted new]}}
    # watermarks[task]: the adapter watermark every count of that task was made against (None: no adapter yet)
    # requested[task] = {"wm": iso|None, "count": int}: the count at the last retrain request
    # adapters_offset: how far adapters/index.jsonl was read (-1: not yet, every known task's folder is asked once)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    watermarks: dict[str, str | None] = field(default_factory=dict)
    requested: dict[str, dict[str, Any]] = field(default_factory=dict)
    adapters_offset: int = -1
    segment_by: str = ""  # the FT_SEGMENT_BY the file counts were made with

    @classmethod
    def from_json(cls, text: str | None) -> RetrainState:
        """State from a sensor cursor; an empty cursor is an empty state."""
        return cls(**json.loads(text)) if text else cls()

    def to_json(self) -> str:
        """The state as a compact sensor cursor."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class TaskCount:
    """New examples of one task since its latest adapter, and the newest ingested_at among them."""

    task: str
    watermark: str | None
    count: int
    newest: str | None


@dataclass(frozen=True)
class Scan:
    """The result of one incremental pass: counts per task and how many parquet files had to be read."""

    counts: dict[str, TaskCount]
    files_read: int


def _signature(path: Path) -> list[int]:
    # partitions are replaced by rename, so the inode changes even when mtime and size happen to match
    stat = path.stat()
    return [stat.st_mtime_ns, stat.st_size, stat.st_ino]


def _count_file(path: Path, watermark: Callable[[str], str | None], segment_by: str = "") -> dict[str, list]:
    """Per task, and per segment of `segment_by` when set, in one settlements file: max ingested_at and the rows newer
    than that model key's adapter watermark."""
    table = pq.read_table(path, columns=["task", "ingested_at", *([segment_by, "final_text"] if segment_by else [])])
    counts = _count_keys(table["task"], table["ingested_at"], watermark)
    if segment_by:
        # a segment counts examples, as its dataset's minimum does: settled records with an approved text
        examples = table.filter(pc.is_valid(table["final_text"]))
        keys = _segment_model_keys(examples["task"], examples[segment_by])
        counts.update(_count_keys(keys, examples["ingested_at"], watermark))
    return counts


def _segment_model_keys(tasks: pa.ChunkedArray, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """`<task>.<segment>` per row (null where the value makes no segment key), keys computed once per distinct value."""
    distinct = pc.unique(values).drop_null()
    keys = segment_keys(distinct.to_pylist())
    per_value = pa.array([keys[v] for v in distinct.to_pylist()], type=pa.string())
    segments = pc.take(per_value, pc.index_in(values, value_set=distinct))
    return pc.binary_join_element_wise(tasks, segments, SEPARATOR)


def _count_keys(keys: pa.ChunkedArray, times: pa.ChunkedArray, watermark: Callable[[str], str | None]) -> dict[str, list]:
    """Per model key: the newest ingested_at and the rows newer than the key's watermark, counted column-wise."""
    table = pa.table({"key": keys, "at": times}).filter(pc.is_valid(keys))
    names = pc.unique(table["key"])
    marks = pa.array([parse_time(watermark(k)) for k in names.to_pylist()], type=times.type)
    row_marks = pc.take(marks, pc.index_in(table["key"], value_set=names))
    newer = pc.or_kleene(pc.is_null(row_marks), pc.greater(table["at"], row_marks))
    grouped = table.append_column("new", pc.cast(newer, pa.int64())).group_by("key").aggregate([("at", "max"), ("new", "sum")])
    return {row["key"]: [row["at_max"].isoformat(), int(row["new_sum"])] for row in grouped.to_pylist()}


def scan_settlements(state: RetrainState, lake_dir: Path, adapters_dir: Path, segment_by: str = "") -> Scan:
    """Bring `state` up to date with the lake and the adapters, reading only files that changed or hold new rows;
    with `segment_by`, each segment of a task is counted too, under its model key `<task>.<segment>`."""
    if segment_by:
        checked_segment_field(segment_by)
    if segment_by != state.segment_by:
        # segments switched on, off or to another field: every file is counted again
        state.files, state.segment_by = {}, segment_by
        state.watermarks = {task: wm for task, wm in state.watermarks.items() if not is_segment(task)}
    # A file is read when it is new, when it was rewritten, or when its task's adapter watermark moved below the
    # newest row the file holds for that task; every other file keeps its counts, so cost follows new data.
    present = {date: partition_file(lake_dir, SETTLEMENTS, date) for date in partition_dates(lake_dir, SETTLEMENTS)}
    for gone in set(state.files) - set(present):
        del state.files[gone]
    # only tasks and segments with a new adapter are asked for their watermark: the cost follows new adapters, not
    # the number of segments
    watermarks = dict(state.watermarks)
    for task in _new_adapters(state, adapters_dir) & set(watermarks):
        watermarks[task] = adapter_watermark(adapters_dir, task)
    moved = {task for task, wm in watermarks.items() if wm != state.watermarks[task]}

    to_read = []
    for date, path in present.items():
        entry = state.files.get(date)
        if entry is None or entry["sig"] != _signature(path) or not _refresh(entry, moved, watermarks):
            to_read.append(date)

    def watermark(task: str) -> str | None:
        # a task seen for the first time is counted against its own adapter, if one already exists
        if task not in watermarks:
            watermarks[task] = adapter_watermark(adapters_dir, task)
        return watermarks[task]

    for date in to_read:
        path = present[date]
        state.files[date] = {"sig": _signature(path), "tasks": _count_file(path, watermark, segment_by)}
    state.watermarks = watermarks
    return Scan(counts=_totals(state), files_read=len(to_read))


def _new_adapters(state: RetrainState, adapters_dir: Path) -> set[str]:
    """Tasks with an adapter recorded in adapters/index.jsonl since the last scan; every known task on the first scan
    or after the index was replaced. Moves the state's offset to the index's end, read before any watermark is."""
    recorded = adapters_since(adapters_dir, state.adapters_offset) if state.adapters_offset >= 0 else None
    if recorded is None:
        _, state.adapters_offset = adapters_since(adapters_dir, 0) or ([], 0)
        return set(state.watermarks)
    tasks, state.adapters_offset = recorded
    return set(tasks)


def _refresh(entry: dict[str, Any], moved: set[str], watermarks: dict[str, str | None]) -> bool:
    """Zero the counts of tasks whose new watermark covers all their rows in the file; False if it must be reread."""
    affected = moved & set(entry["tasks"])
    for task in affected:
        wm = watermarks[task]
        if wm is None or parse_time(entry["tasks"][task][0]) > parse_time(wm):
            return False
    for task in affected:
        entry["tasks"][task][1] = 0
    return True


def _totals(state: RetrainState) -> dict[str, TaskCount]:
    counts = {task: 0 for task in state.watermarks}
    newest: dict[str, str | None] = {task: None for task in state.watermarks}
    for entry in state.files.values():
        for task, (latest, new) in entry["tasks"].items():
            if new <= 0:
                continue
            counts[task] += new
            seen = newest[task]
            if seen is None or parse_time(latest) > parse_time(seen):
                newest[task] = latest
    return {task: TaskCount(task, state.watermarks[task], counts[task], newest[task]) for task in sorted(counts)}


def due_retrains(
    state: RetrainState, scan: Scan, threshold: int, busy: Collection[str] = (), segment_minimum: int = 0
) -> list[TaskCount]:
    """Tasks (and segments) whose new examples reached `threshold`, each once per adapter unless `threshold` more arrive;
    never a busy one; a segment without an adapter also needs `segment_minimum` examples."""
    # A request is remembered with the adapter watermark it was made against, so a retrain still running (or one
    # that failed) is not requested again every tick; a new adapter, or another `threshold` examples, re-arms it.
    # A task being trained right now (by a run this sensor did not request) is left unrequested and unremembered:
    # once that training ends, its new watermark decides whether the examples left over are due.
    due = []
    for task, count in scan.counts.items():
        if count.count < required(count, threshold, segment_minimum) or task in busy:
            continue
        last = state.requested.get(task)
        if last and last["wm"] == count.watermark and count.count - last["count"] < threshold:
            continue
        state.requested[task] = {"wm": count.watermark, "count": count.count}
        due.append(count)
    return due


def required(count: TaskCount, threshold: int, segment_minimum: int) -> int:
    """New examples a task or segment needs before it is trained: the threshold, and a segment's minimum before its first adapter."""
    return max(threshold, segment_minimum) if is_segment(count.task) and count.watermark is None else threshold


def qualified(scan: Scan, segment_minimum: int) -> list[str]:
    """Model keys that have a partition of their own: every task, and each segment with `segment_minimum` examples."""
    return sorted(
        key
        for key, count in scan.counts.items()
        if not is_segment(key) or count.watermark is not None or count.count >= segment_minimum
    )


def retrain_run_key(count: TaskCount) -> str:
    """Run key of a retrain: the task and the newest example counted, so the same data never retrains twice."""
    return f"retrain:{count.task}:{count.newest}"

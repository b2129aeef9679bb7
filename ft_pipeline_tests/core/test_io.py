import json
import math
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ft_pipeline.core.io import (
    RawJson,
    atomic_path,
    checked_name,
    partition_dates,
    partition_file,
    replace_dir_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_large_json_atomic,
    write_parquet_atomic,
)


@pytest.mark.parametrize("name", ["../x", "a/b", "", "A", "-x", "x" * 65, ".hidden", "support\n", "support\r\n"])
def test_unsafe_names_never_become_paths(name):
    with pytest.raises(ValueError):
        checked_name(name)


def test_partition_layout(tmp_path):
    table = pa.table({"x": [1, 2]})
    write_parquet_atomic(table, partition_file(tmp_path, "raw_logs", "2026-01-02"))
    write_parquet_atomic(table, partition_file(tmp_path, "raw_logs", "2026-01-01"))
    assert partition_dates(tmp_path, "raw_logs") == ["2026-01-01", "2026-01-02"]
    assert pq.read_table(partition_file(tmp_path, "raw_logs", "2026-01-01")).equals(table)
    with pytest.raises(ValueError):
        partition_file(tmp_path, "raw_logs", "2026-1-1/../../etc")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl_atomic([{"a": 1}], target)

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(rows(), target)
    assert target.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_replace_dir_atomic_swaps_whole_folders(tmp_path):
    target = tmp_path / "model"
    for content in ("one", "two"):
        staging = tmp_path / f"staging-{content}"
        staging.mkdir()
        (staging / "weights").write_text(content)
        replace_dir_atomic(staging, target)
    assert (target / "weights").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_large_json_reads_back_as_the_json_module_writes_it_with_nan_as_null(tmp_path):
    value = {
        "as_of": date(2026, 1, 2),
        "generated_at": datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        "groups": {"user_id": {"ü": {"n": 3, "rate": np.float64(0.1) + 0.2, "p95": None, "windows": {}}}},
        "by_attempt": [{1: 2}, []],
    }
    write_json_atomic(value, tmp_path / "small.json")
    large = write_large_json_atomic({**value, "nan": math.nan}, tmp_path / "large.json")
    text = large.read_text(encoding="utf-8")
    assert json.loads(text) == {**json.loads((tmp_path / "small.json").read_text(encoding="utf-8")), "nan": None}
    assert text.endswith("}\n") and '\n  "groups": {\n    "user_id": {\n      "ü"' in text
    # raw JSON is written from its buffers where it stands, beside strings holding what marks its place in orjson's output
    raw = {"a": RawJson(b"{", memoryview(b'"k": [1, "\\u0000"]}')[:-1], b"}"), "nul": "\x00", "b": [RawJson(b"2")]}
    spliced = write_large_json_atomic(raw, tmp_path / "raw.json")
    assert json.loads(spliced.read_text(encoding="utf-8")) == {"a": {"k": [1, "\x00"]}, "nul": "\x00", "b": [2]}

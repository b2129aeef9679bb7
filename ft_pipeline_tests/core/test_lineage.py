import json
from datetime import UTC, datetime

import pytest

from ft_pipeline.core.lineage import adapter_dir, adapter_versions, latest_adapter, parse_time, read_dataset_manifest


def write_adapter(root, task, version, watermark):
    folder = adapter_dir(root, task, version)
    folder.mkdir(parents=True)
    (folder / "training_config.json").write_text(json.dumps({"data_watermark": watermark}))


def test_latest_adapter_is_the_highest_complete_version(tmp_path):
    assert latest_adapter(tmp_path, "qa") is None
    write_adapter(tmp_path, "qa", 2, "2026-01-02T00:00:00+00:00")
    write_adapter(tmp_path, "qa", 10, "2026-01-10T00:00:00+00:00")
    (tmp_path / "qa" / "11").mkdir()  # a half-moved folder without its config is not an adapter
    assert adapter_versions(tmp_path, "qa") == [2, 10]
    assert latest_adapter(tmp_path, "qa") == {"data_watermark": "2026-01-10T00:00:00+00:00", "version": 10}


def test_versions_and_tasks_are_checked_before_becoming_paths(tmp_path):
    with pytest.raises(ValueError):
        adapter_dir(tmp_path, "qa", "../1")
    with pytest.raises(ValueError):
        read_dataset_manifest(tmp_path, "../qa")
    assert read_dataset_manifest(tmp_path, "qa") is None


def test_watermarks_compare_as_utc_instants():
    assert parse_time("2026-01-01T23:30:00-02:00") == datetime(2026, 1, 2, 1, 30, tzinfo=UTC)
    assert parse_time("2026-01-02T01:30:00") == parse_time(datetime(2026, 1, 2, 1, 30))
    assert parse_time(None) is None and parse_time("") is None

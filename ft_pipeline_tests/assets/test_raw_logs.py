"""The raw_logs asset materializes partition ranges into the lake, with counts in its metadata."""

import json

from dagster import DagsterInstance, materialize

from ft_pipeline.assets.raw_logs import raw_logs
from ft_pipeline.core.io import partition_dates
from ft_pipeline.resources import PipelineResource


def test_materialize_a_partition_range(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    lines = [
        {
            "log_id": f"r{i}",
            "timestamp": f"2024-03-0{1 + i % 3}T10:00:00Z",
            "task": "game",
            "prompt": "mail me at jane.doe@example.com",
            "output": "o",
        }
        for i in range(9)
    ]
    (inbox / "a.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\nnot json\n")
    resources = {"pipeline": PipelineResource(data_dir=str(tmp_path))}
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [raw_logs],
            resources=resources,
            instance=instance,
            tags={"dagster/asset_partition_range_start": "2024-03-01", "dagster/asset_partition_range_end": "2024-03-02"},
        )
        assert result.success
        meta = result.asset_materializations_for_node("raw_logs")[0].metadata
        assert meta["new_rows"].value == 6 and meta["rows_stored"].value == 6 and meta["quarantined_invalid_json"].value == 1
        assert meta["lines_checked_one_by_one"].value == 10  # the file holds a bad line
        assert "| r0 |" in meta["preview"].value
        # the lake keeps the original prompt; the preview the UI shows is redacted
        assert "jane.doe@example.com" not in meta["preview"].value and "[EMAIL]" in meta["preview"].value
        assert partition_dates(tmp_path / "lake", "raw_logs") == ["2024-03-01", "2024-03-02"]
        again = materialize([raw_logs], resources=resources, instance=instance, partition_key="2024-03-02")
        meta = again.asset_materializations_for_node("raw_logs")[0].metadata
        assert (meta["new_rows"].value, meta["duplicates"].value, meta["rows_stored"].value) == (0, 6, 3)
        # the last day stores the file's last rows: it is archived, and the retention runs after the ingest
        last = materialize(
            [raw_logs],
            resources=resources,
            instance=instance,
            partition_key="2024-03-03",
            run_config={"ops": {"raw_logs": {"config": {"raw_retention_days": 1}}}},
        )
        meta = last.asset_materializations_for_node("raw_logs")[0].metadata
        assert (meta["new_rows"].value, meta["inbox_files_kept"].value, meta["inbox_files_archived"].value) == (3, 0, 1)
        assert meta["expired_raw_partitions"].value == 3 and meta["expired"].value["raw_logs"] == [
            "2024-03-01",
            "2024-03-02",
            "2024-03-03",
        ]
        assert partition_dates(tmp_path / "lake", "raw_logs") == [] and not list(inbox.glob("*.jsonl"))

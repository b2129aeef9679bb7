"""Tests of the settlements asset: materialized in a temporary data dir on prepared raw_logs partitions."""

import pyarrow.parquet as pq
from dagster import materialize

from ft_pipeline.assets.settlements import settlements
from ft_pipeline.core.settlements import settlements_path
from ft_pipeline.resources import PipelineResource
from ft_pipeline.settings import Settings
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs


def metadata_of(result):
    """Metadata values of the settlements materializations of a run, one dict per partition."""
    return {
        event.partition: {key: value.value for key, value in event.metadata.items()}
        for event in result.asset_materializations_for_node("settlements")
    }


def test_materialize_one_partition(tmp_path):
    settings = Settings.from_env(env={}, data_dir=str(tmp_path))
    write_raw_logs(
        settings.lake_dir,
        "2024-01-15",
        [
            raw_log("a", prompt="Mail bob@example.com about it", quality_score=9.0),
            raw_log("b", decision="edited", output="As an AI language model, the answer is 4.", final_output="The answer is 4."),
            raw_log("c", decision="rejected"),
            raw_log("d", quality_score=2.0),
        ],
    )
    result = materialize(
        [settlements],
        partition_key="2024-01-15",
        resources={"pipeline": PipelineResource(data_dir=str(tmp_path))},
    )
    assert result.success
    meta = metadata_of(result)["2024-01-15"]
    assert meta["settled"] == 2 and meta["rows_in"] == 4 and meta["excluded"] == 2
    assert meta["excluded:not_settled:rejected"] == 1 and meta["excluded:low_quality_score"] == 1
    assert meta["pii:EMAIL"] == 1 and meta["pii:CARD"] == 0
    assert meta["edit_rate"] == 0.5 and 0.5 < meta["mean_retained"] < 1
    assert "[EMAIL]" in meta["preview"]
    written = pq.read_table(settlements_path(settings, "2024-01-15"))
    assert sorted(written["log_id"].to_pylist()) == ["a", "b"]


def test_run_config_switches_a_filter_off(tmp_path):
    write_raw_logs(tmp_path / "lake", "2024-01-15", [raw_log("low", quality_score=2.0)])
    result = materialize(
        [settlements],
        partition_key="2024-01-15",
        resources={"pipeline": PipelineResource(data_dir=str(tmp_path))},
        run_config={"ops": {"settlements": {"config": {"min_quality_score": 1.0}}}},
    )
    assert metadata_of(result)["2024-01-15"]["settled"] == 1


def test_partition_range_in_one_run(tmp_path):
    for date, n in [("2024-01-15", 2), ("2024-01-16", 0), ("2024-01-17", 3)]:
        write_raw_logs(tmp_path / "lake", date, [raw_log(f"{date}-{i}", timestamp=f"{date}T10:00:0{i}+00:00") for i in range(n)])
    result = materialize(
        [settlements],
        resources={"pipeline": PipelineResource(data_dir=str(tmp_path))},
        tags={"dagster/asset_partition_range_start": "2024-01-15", "dagster/asset_partition_range_end": "2024-01-17"},
    )
    assert result.success
    assert set(metadata_of(result)) == {"2024-01-15", "2024-01-16", "2024-01-17"}
    settings = Settings.from_env(env={}, data_dir=str(tmp_path))
    counts = [pq.read_table(settlements_path(settings, d)).num_rows for d in ("2024-01-15", "2024-01-16", "2024-01-17")]
    assert counts == [2, 0, 3]

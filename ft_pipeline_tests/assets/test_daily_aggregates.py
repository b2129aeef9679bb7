"""Tests of the daily_aggregates asset: one day's aggregates written with metadata, a day without data too."""

from dagster import materialize

from ft_pipeline.assets.daily_aggregates import daily_aggregates
from ft_pipeline.core.aggregates import aggregates_path
from ft_pipeline.core.settlements import build_partition
from ft_pipeline.resources import PipelineResource
from ft_pipeline.settings import Settings
from ft_pipeline_tests.lake_fixtures import raw_log, write_raw_logs


def test_materialize_writes_the_days_aggregates_with_their_counts(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    rows = [raw_log(f"r{i}", timestamp="2024-01-15T12:00:00+00:00", agent="a", decision="accepted") for i in range(4)]
    write_raw_logs(settings.lake_dir, "2024-01-15", rows)
    build_partition(settings, "2024-01-15")
    resources = {"pipeline": PipelineResource(data_dir=str(tmp_path))}

    result = materialize([daily_aggregates], partition_key="2024-01-15", resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("daily_aggregates")[0].metadata
    assert metadata["records"].value == 4 and metadata["rows/groups"].value > 0
    assert metadata["path"].value == str(aggregates_path(settings.lake_dir, "2024-01-15"))

    empty = materialize([daily_aggregates], partition_key="2024-01-16", resources=resources)
    assert empty.success and aggregates_path(settings.lake_dir, "2024-01-16").is_file()
    assert empty.asset_materializations_for_node("daily_aggregates")[0].metadata["records"].value == 0

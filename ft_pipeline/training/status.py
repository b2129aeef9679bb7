"""Status for `ft-pipeline status`: per task settled data, new data since the last adapter, the champion; and the
pattern report's failing alert checks."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ft_pipeline.core.freshness import new_examples_count
from ft_pipeline.core.io import TASK_NAME, checked_name, partition_dates, table_glob
from ft_pipeline.core.lineage import adapter_versions, latest_adapter, parse_time, read_adapter_config
from ft_pipeline.core.patterns import check_findings
from ft_pipeline.core.retrain import SETTLEMENTS
from ft_pipeline.core.segments import checked_model_key, checked_segment_field, model_key, segment_key, segment_keys
from ft_pipeline.settings import Settings


def settled_counts(settings: Settings) -> dict[str, int]:
    """Settled examples per task in the lake."""
    import duckdb

    if not partition_dates(settings.lake_dir, SETTLEMENTS):
        return {}
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT task, count(*) FROM read_parquet(?) GROUP BY task", [table_glob(settings.lake_dir, SETTLEMENTS)]
        ).fetchall()
    return {task: int(n) for task, n in rows if task is not None}


def champion_scores(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a champion's evaluation: its scores, the base model's, the test against the base."""
    candidate, base = evaluation["scores"]["candidate"], evaluation["scores"]["base"]
    return {
        "loss": candidate["loss"],
        "perplexity": candidate["perplexity"],
        "token_accuracy": candidate["token_accuracy"],
        "chrf": candidate["chrf"],
        "exact_match": candidate["exact_match"],
        "base_loss": base["loss"],
        "base_chrf": base["chrf"],
        "p_value_vs_base": evaluation["tests"]["vs_base"]["p_value"],
        "n_examples": evaluation["n_examples"],
        "evaluated_at": evaluation["evaluated_at"],
    }


def task_status(settings: Settings) -> list[dict[str, Any]]:
    """One row per task (seen in the lake, the datasets or the adapters): data, retrain countdown, champion."""
    from ft_pipeline.training.champion import current_champion
    from ft_pipeline.training.evaluation import read_evaluation

    settled = settled_counts(settings)
    tasks = set(settled)
    for folder in (settings.datasets_dir, settings.adapters_dir):
        if folder.is_dir():
            tasks |= {p.name for p in folder.iterdir() if p.is_dir() and TASK_NAME.fullmatch(p.name)}
    rows = []
    for task in sorted(tasks):
        new = new_examples_count(settings, task)
        adapter = latest_adapter(settings.adapters_dir, task)
        champion = current_champion(settings, task)
        evaluation = read_evaluation(settings, task, champion) if champion is not None else None
        champion_config = _adapter_config(settings, task, champion)
        rows.append(
            {
                "task": task,
                "settled": settled.get(task, 0),
                "new_examples": new,
                "until_retrain": max(0, settings.retrain_threshold - new),
                "latest_version": adapter["version"] if adapter else None,
                "last_trained": adapter.get("trained_at") if adapter else None,
                "champion_version": champion,
                "champion_base": champion_config.get("base_identity") if champion_config else None,
                "champion_scores": champion_scores(evaluation) if evaluation else None,
                **({"segments": segment_status(settings, task)} if settings.segment_by else {}),
            }
        )
    return rows


def segment_status(settings: Settings, task: str, segment: str | None = None) -> list[dict[str, Any]]:
    """One row per segment of a task (FT_SEGMENT_BY; only `segment` when given): settled examples, examples until its
    next training, its last training and champion with scores, quality average/min/max and its top topics."""
    import duckdb

    from ft_pipeline.training.champion import current_champion
    from ft_pipeline.training.evaluation import read_evaluation

    task = checked_name(task)
    if not settings.segment_by or not partition_dates(settings.lake_dir, SETTLEMENTS):
        return []
    field = checked_segment_field(settings.segment_by)
    glob = table_glob(settings.lake_dir, SETTLEMENTS)
    # only the columns the status reads: the texts stay in the files
    latest = f"""SELECT CAST({field} AS VARCHAR) AS value, final_text IS NOT NULL AS example, ingested_at, quality_score, topic
        FROM read_parquet($glob, union_by_name = true) WHERE task = $task AND {field} IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY log_id ORDER BY ingested_at DESC) = 1"""
    with duckdb.connect() as con:
        con.execute(f"CREATE TEMP TABLE seg AS {latest}", {"glob": glob, "task": task})
        keys = {
            v: k for v, k in segment_keys(row[0] for row in con.execute("SELECT DISTINCT value FROM seg").fetchall()).items() if k
        }
        if segment is not None:
            wanted = segment_key(segment)
            keys = {v: k for v, k in keys.items() if k == wanted}
        adapters = {value: latest_adapter(settings.adapters_dir, model_key(task, key)) for value, key in keys.items()}
        marks = pa.table(
            {
                "value": list(keys),
                "mark": pa.array(
                    [parse_time((a or {}).get("data_watermark")) for a in adapters.values()], pa.timestamp("us", "UTC")
                ),
            }
        )
        con.register("marks", marks)
        stats = con.execute(
            """SELECT value, count(*) FILTER (WHERE example),
                      count(*) FILTER (WHERE example AND (mark IS NULL OR ingested_at > mark)),
                      avg(quality_score), min(quality_score), max(quality_score)
               FROM seg JOIN marks USING (value) GROUP BY value"""
        ).fetchall()
        topics: dict[str, list[dict[str, Any]]] = {}
        for value, topic, n in con.execute(
            """SELECT value, topic, count(*) AS n FROM seg JOIN marks USING (value) WHERE topic IS NOT NULL
               GROUP BY value, topic QUALIFY row_number() OVER (PARTITION BY value ORDER BY n DESC, topic) <= 3
               ORDER BY value, n DESC, topic"""
        ).fetchall():
            topics.setdefault(value, []).append({"topic": topic, "n": int(n)})
    rows = []
    for value, settled, new, q_avg, q_min, q_max in stats:
        key, adapter = model_key(task, keys[value]), adapters[value]
        champion = current_champion(settings, key)
        evaluation = read_evaluation(settings, key, champion) if champion is not None else None
        needed = settings.retrain_threshold if adapter else max(settings.retrain_threshold, settings.segment_min_examples)
        rows.append(
            {
                "segment": keys[value],
                "model": key,
                "settled": int(settled),
                "new_examples": int(new),
                "until_retrain": max(0, needed - int(new)),
                "qualified": adapter is not None or int(settled) >= settings.segment_min_examples,
                "latest_version": adapter["version"] if adapter else None,
                "last_trained": adapter.get("trained_at") if adapter else None,
                "champion_version": champion,
                "champion_scores": champion_scores(evaluation) if evaluation else None,
                "quality": {"mean": q_avg, "min": q_min, "max": q_max},
                "top_topics": topics.get(value, []),
            }
        )
    return sorted(rows, key=lambda row: (-row["settled"], row["segment"]))


def report_alerts(settings: Settings) -> dict[str, Any]:
    """The pattern report's checks (regressions and alerts) as the last report build left them: its path, its day,
    when it was built, and the findings of each failing check (none failing: an empty dict)."""
    path = settings.reports_dir / "pattern_report.json"
    if not path.is_file():
        return {"report": None, "as_of": None, "generated_at": None, "failing": {}}
    report = json.loads(path.read_text(encoding="utf-8"))
    failing = {name: findings for name, findings in check_findings(report).items() if findings}
    return {"report": str(path), "as_of": report.get("as_of"), "generated_at": report.get("generated_at"), "failing": failing}


def _adapter_config(settings: Settings, task: str, version: int | None) -> dict[str, Any] | None:
    """An adapter's training config, or None when there is no such version or its folder is gone."""
    if version is None or version not in adapter_versions(settings.adapters_dir, task):
        return None
    return read_adapter_config(settings.adapters_dir, task, version)


def chosen_version(settings: Settings, task: str, version: int | None = None) -> int:
    """The adapter version asked for, by default the champion, else the newest; LookupError when the task has no such one."""
    from ft_pipeline.training.champion import current_champion

    versions = adapter_versions(settings.adapters_dir, checked_model_key(task))
    if version is None:
        version = current_champion(settings, task) or (versions[-1] if versions else None)
    if version is None or int(version) not in versions:
        raise LookupError(f"task {task!r} has no adapter {'v' + str(version) if version else ''} under {settings.adapters_dir}")
    return int(version)


def adapter_lineage(settings: Settings, task: str, version: int | None = None) -> dict[str, Any]:
    """What an adapter (default: the champion, else the newest) was built from: dataset version and watermark, log ids
    per split, base identity, the MLflow and Dagster runs; read from its training config and the dataset manifest
    logged with its run."""
    from ft_pipeline.training.tracking import dataset_manifest

    task = checked_model_key(task)
    version = chosen_version(settings, task, version)
    config = read_adapter_config(settings.adapters_dir, task, version)
    manifest = dataset_manifest(settings, config["mlflow_run_id"]) or {}
    return {
        "task": task,
        "version": int(version),
        "dataset_version": config.get("dataset_version"),
        "data_watermark": config.get("data_watermark"),
        "log_ids": {split: manifest.get(f"n_{split}") for split in ("train", "dev", "test")},
        "split": manifest.get("split"),
        "base_identity": config.get("base_identity"),
        "mlflow_run_id": config.get("mlflow_run_id"),
        "dagster_run_id": config.get("dagster_run_id"),
        "trained_at": config.get("trained_at"),
    }

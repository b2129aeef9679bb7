"""The main job: materialize an asset selection for every partition that has data, in dependency order."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, RunsFilter, materialize

from ft_pipeline.core import feedback
from ft_pipeline.core.io import partition_dates
from ft_pipeline.core.locks import LOCK_NAME, hold, is_free, lock_path
from ft_pipeline.core.segments import model_key
from ft_pipeline.inflight import IN_PROGRESS
from ft_pipeline.settings import Settings

DAILY_ASSETS = ("raw_logs", "settlements", "daily_aggregates")
GLOBAL_ASSETS = ("pattern_report", "base_model")
TASK_ASSETS = ("task_dataset", "lora_adapter", "adapter_evaluation", "champion", "rollout")
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# names the lock an `ft-pipeline run` process holds while it lives: a run it started that is still STARTED while the
# lock is free was left by a killed process
OWNER_TAG = "ft_pipeline/owner"
OWNER_PREFIX = "runner-"
# Step progress and our own log lines; Dagster's per-event DEBUG lines stay in the UI's run log.
CONSOLE_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class StageRun:
    """One Dagster run the runner launched."""

    assets: list[str]
    partitions: str
    run_id: str
    success: bool
    failed_steps: list[str] = field(default_factory=list)


def pipeline_instance() -> DagsterInstance:
    """The configured Dagster instance: $DAGSTER_HOME, else the dagster.yaml in the current folder."""
    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    if Path("dagster.yaml").is_file():
        os.environ["DAGSTER_HOME"] = str(Path.cwd())
        return DagsterInstance.get()
    raise RuntimeError("No Dagster instance: set DAGSTER_HOME to a folder with a dagster.yaml, or run from the repo root.")


def selected_keys(defs: Definitions, select: str) -> set[str]:
    """Asset names that a Dagster selection string (or a comma-separated list of them) selects."""
    clauses = [part.strip() for part in select.split(",") if part.strip()] or ["*"]
    selection = AssetSelection.from_coercible(clauses)
    return {key.to_user_string() for key in selection.resolve(defs.resolve_asset_graph())}


def data_dates(settings: Settings) -> list[str]:
    """Days the daily assets have work on: those of inbox files not ingested whole yet, lake days whose settlements
    or aggregates are missing or older than their sources, and days whose calls got feedback since they were settled.
    A day already processed costs nothing."""
    from ft_pipeline.core import aggregates, manifest, settlements
    from ft_pipeline.core.ingest import inbox_dates, inbox_files
    from ft_pipeline.partitions import daily_partitions

    # only days of the partitions: a record from before FT_PARTITIONS_START, from year 1 or 9999 is quarantined by the
    # ingest, and must not stretch the run's range beyond the partitions (Dagster refuses it, or walks ten thousand years)
    first, last = settings.partitions_start, daily_partitions.get_last_partition_key() or settings.partitions_start
    pending = manifest.pending_files(settings.inbox_dir, manifest.load(settings.state_dir), inbox_files(settings.inbox_dir))
    dates = inbox_dates((path for path, _ in pending.values()), first, last)
    if pending and not dates:
        # files with no record of a partition day (all invalid, say) still need an ingest, to quarantine them
        dates.add(last)
    dates |= {
        day
        for day in partition_dates(settings.lake_dir, "raw_logs")
        if settlements.is_stale(settings, day) or aggregates.is_stale(settings.lake_dir, day)
    }
    dates |= {day for day in feedback.stale_days(settings) if first <= day <= last}
    return sorted(dates)


def day_blocks(dates: list[str]) -> list[list[str]]:
    """`dates` (sorted) cut into runs of consecutive days: one Dagster run covers a range, and days between two
    blocks have nothing to do."""
    blocks: list[list[str]] = []
    for day in dates:
        if blocks and date.fromisoformat(day) - date.fromisoformat(blocks[-1][-1]) == timedelta(days=1):
            blocks[-1].append(day)
        else:
            blocks.append([day])
    return blocks


def settled_tasks(settings: Settings) -> list[str]:
    """Tasks that have at least one settled record in the lake, each followed by its segments (FT_SEGMENT_BY) with
    FT_SEGMENT_MIN_EXAMPLES examples: a segment starts from its task's champion, so it trains after it."""
    import duckdb

    from ft_pipeline.core.datasets import segment_counts
    from ft_pipeline.core.io import table_glob

    if not partition_dates(settings.lake_dir, "settlements"):
        return []
    rows = duckdb.sql(f"SELECT DISTINCT task FROM read_parquet('{table_glob(settings.lake_dir, 'settlements')}')").fetchall()
    keys = [row[0] for row in rows]
    if settings.segment_by:
        counts = segment_counts(settings.lake_dir, settings.segment_by)
        keys += [model_key(task, segment) for (task, segment), n in counts.items() if n >= settings.segment_min_examples]
    # "<task>" sorts before every "<task>.<segment>"
    return sorted(keys)


def run_pipeline(
    select: str = "*",
    settings: Settings | None = None,
    instance: DagsterInstance | None = None,
    log: Callable[[str], None] = print,
) -> list[StageRun]:
    """Materialize the selection: daily assets over all days with data, then global assets, then each task."""
    from ft_pipeline.definitions import defs

    settings = settings or Settings.from_env()
    owner = f"{OWNER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        # several processes creating the sqlite stores at once fail on each other's tables: one sets them up; owner
        # locks are created and swept under the same lock, so a sweep never takes a new owner's lock for a dead one's
        with hold(settings.root, "stores"):
            instance = instance or pipeline_instance()
            dead = fail_dead_runs(instance, settings)
            stack.callback(lock_path(settings.root, owner).unlink, missing_ok=True)
            stack.enter_context(hold(settings.root, owner))
        if dead:
            log(f"marked {len(dead)} run(s) of killed ft-pipeline processes failed: {', '.join(dead)}")
        return _run_stages(defs, select, settings, instance, log, {OWNER_TAG: owner})


def fail_dead_runs(instance: DagsterInstance, settings: Settings) -> list[str]:
    """Report as failed the runs still in progress whose `ft-pipeline run` process died, and drop dead owners' locks."""
    dead = [
        run
        for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS))
        if LOCK_NAME.fullmatch(run.tags.get(OWNER_TAG, "")) and is_free(lock_path(settings.root, run.tags[OWNER_TAG]))
    ]
    for run in dead:
        instance.report_run_failed(run, "the ft-pipeline process that ran it died before it ended")
        # the slots of the pools its steps held; without a daemon nobody else gives them back
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    for lock in lock_path(settings.root, "stores").parent.glob(f"{OWNER_PREFIX}*.lock"):
        if is_free(lock):
            lock.unlink(missing_ok=True)
    return [run.run_id for run in dead]


def _run_stages(
    defs: Definitions,
    select: str,
    settings: Settings,
    instance: DagsterInstance,
    log: Callable[[str], None],
    owner: dict[str, str],
) -> list[StageRun]:
    from ft_pipeline.partitions import task_partitions

    wanted = selected_keys(defs, select)
    every_asset = list(defs.assets or []) + list(defs.asset_checks or [])
    runs: list[StageRun] = []

    def launch(names: list[str], label: str, tags: dict[str, str] | None = None, **kwargs) -> StageRun:
        log(f"materializing {', '.join(names)} for {label}")
        result = materialize(
            every_asset,
            selection=[AssetKey(name) for name in names],
            instance=instance,
            resources=defs.resources,
            run_config=CONSOLE_INFO,
            raise_on_error=False,
            tags={**owner, **(tags or {})},
            **kwargs,
        )
        failed = [event.step_key for event in result.all_events if event.is_step_failure]
        run = StageRun(names, label, result.run_id, result.success, failed)
        log(f"  run {result.run_id}: {'success' if result.success else 'FAILED in ' + ', '.join(failed)}")
        runs.append(run)
        return run

    daily = [name for name in DAILY_ASSETS if name in wanted]
    if daily:
        blocks = day_blocks(data_dates(settings))
        for days in blocks:
            launch(daily, f"{days[0]}...{days[-1]}", tags={RANGE_START_TAG: days[0], RANGE_END_TAG: days[-1]})
        if not blocks:
            log(f"no new files in {settings.inbox_dir} and every day of the lake is up to date: nothing to ingest")
        # feedback this run ingested may be on calls of older days: those are settled again in the same run
        resettle = [name for name in daily if name != "raw_logs"]
        stale = sorted(day for day in feedback.stale_days(settings) if not any(day in days for days in blocks))
        for days in day_blocks(stale) if resettle else []:
            launch(resettle, f"{days[0]}...{days[-1]} (new feedback)", tags={RANGE_START_TAG: days[0], RANGE_END_TAG: days[-1]})

    global_assets = [name for name in GLOBAL_ASSETS if name in wanted]
    if global_assets:
        launch(global_assets, "all data")

    per_task = [name for name in TASK_ASSETS if name in wanted]
    if per_task:
        tasks = settled_tasks(settings)
        with hold(settings.root, "stores"):
            new = [task for task in tasks if not instance.has_dynamic_partition(task_partitions.name, task)]
            if new:
                instance.add_dynamic_partitions(task_partitions.name, new)
        for task in tasks:
            # the whole task stage takes turns with other runs of the task: the second finds its adapter up to date
            with hold(settings.root, f"train-{task}"):
                launch(per_task, f"task {task}", partition_key=task)
    return runs

"""Sensors: new inbox files start the ingest of the days they hold; new settled examples start retrains; new live
evidence steps active rollouts."""

import hashlib
import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ft_pipeline.core import manifest
from ft_pipeline.core.feedback import stale_days
from ft_pipeline.core.ingest import inbox_dates, inbox_files
from ft_pipeline.core.retrain import RetrainState, due_retrains, qualified, retrain_run_key, scan_settlements
from ft_pipeline.core.spool import recover_spools
from ft_pipeline.inflight import tasks_in_progress
from ft_pipeline.jobs import ingest_job, resettle_job, retrain_job, rollout_job
from ft_pipeline.partitions import daily_partitions, task_partitions
from ft_pipeline.resources import PipelineResource


@sensor(job=ingest_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def inbox_sensor(context: SensorEvaluationContext, pipeline: PipelineResource):
    """Publishes dead writers' spool files, then requests one ingest run over the days of inbox files new or changed since the last tick."""
    settings = pipeline.settings()
    inbox = settings.inbox_dir
    # records of a writer killed before it published would otherwise wait for the next LogWriter on this host
    recovered = recover_spools(inbox)
    if recovered:
        context.log.info(f"recovered {len(recovered)} spool file(s) of dead writers: {', '.join(p.name for p in recovered)}")
    seen = json.loads(context.cursor) if context.cursor else {}
    ingested = manifest.load(settings.state_dir)
    # the cursor holds only files not ingested whole yet: the manifest knows the rest, so it never lists every file seen
    pending = manifest.pending_files(inbox, ingested, inbox_files(inbox))
    files = {name: path for name, (path, _) in pending.items()}
    state = {name: [st.st_size, st.st_mtime_ns] for name, (_, st) in pending.items()}
    changed = {name: state[name] for name in files if seen.get(name) != state[name]}
    context.update_cursor(json.dumps(state, sort_keys=True))
    if not changed:
        return SkipReason("no new or changed inbox files")
    days = sorted(inbox_dates(files[name] for name in changed) & set(daily_partitions.get_partition_keys()))
    if not days:
        return SkipReason(f"{len(changed)} new or changed inbox files hold no record of a partition day")
    # one run for the whole range: every run reads the whole inbox, and the single-run backfill policy of the job's
    # assets lets one run cover a range; days in between with nothing new are left as they are by the ingest
    stamp = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:12]
    return RunRequest(
        run_key=f"inbox:{days[0]}:{days[-1]}:{stamp}",  # names the file states: a file changed again triggers again
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )


@sensor(
    job=resettle_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Settles a day again once its calls got new feedback.",
)
def feedback_sensor(context: SensorEvaluationContext, pipeline: PipelineResource):
    """Requests one resettle run per day the ingest marked stale, once per ingest run that marked it."""
    days = stale_days(pipeline.settings())
    partitions = set(daily_partitions.get_partition_keys())
    wanted = {day: batch for day, batch in sorted(days.items()) if day in partitions}
    if not wanted:
        return SkipReason("no day got new feedback on its calls")
    # the run key names the ingest run that marked the day: the same feedback never resettles a day twice
    return [RunRequest(run_key=f"resettle:{day}:{batch}", partition_key=day) for day, batch in wanted.items()]


@sensor(
    job=retrain_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Retrains a task, or a segment of one (FT_SEGMENT_BY), once it has retrain_threshold settled examples "
    "newer than its latest adapter's data.",
)
def retrain_sensor(context: SensorEvaluationContext, pipeline: PipelineResource) -> SensorResult:
    """Counts new settled examples per task from the cursor on, and requests retrains and new task partitions."""
    settings = pipeline.settings()
    state = RetrainState.from_json(context.cursor)
    scan = scan_settlements(state, settings.lake_dir, settings.adapters_dir, settings.segment_by)
    busy = tasks_in_progress(context.instance, settings, scan.counts)
    due = due_retrains(state, scan, settings.retrain_threshold, busy, settings.segment_min_examples)
    if busy:
        context.log.info(f"not requesting tasks being trained now: {', '.join(sorted(busy))}")
    known = set(context.instance.get_dynamic_partitions(task_partitions.name))
    # a segment gets its partition (and its own metadata, checks and history in the UI) once it first qualifies
    new_tasks = sorted(set(qualified(scan, settings.segment_min_examples)) - known)
    context.log.info(
        f"read {scan.files_read} settlements file(s); new examples: "
        + ", ".join(f"{c.task}={c.count}" for c in scan.counts.values())
    )
    return SensorResult(
        run_requests=[
            RunRequest(run_key=retrain_run_key(c), partition_key=c.task, tags={"ft_pipeline/new_examples": str(c.count)})
            for c in due
        ],
        dynamic_partitions_requests=[task_partitions.build_add_request(new_tasks)] if new_tasks else [],
        cursor=state.to_json(),
    )


@sensor(
    job=rollout_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Steps each task's active rollout whenever its evidence (the raw_logs it reads) or its state changed.",
)
def rollout_sensor(context: SensorEvaluationContext, pipeline: PipelineResource) -> SensorResult | SkipReason:
    """One rollout run per task with an active rollout, keyed by the candidate, the stage and the evidence files."""
    from ft_pipeline.serve.rollout import active_rollouts, lake_stamp

    settings = pipeline.settings()
    active = active_rollouts(settings)
    if not active:
        return SkipReason("no active rollout")
    known = set(context.instance.get_dynamic_partitions(task_partitions.name))
    new_tasks = sorted({r.task for r in active} - known)
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"rollout:{r.task}:v{r.candidate}:stage{r.stage}:{lake_stamp(settings, r)}",
                partition_key=r.task,
                tags={"ft_pipeline/rollout_stage": f"{r.percent:g}"},
            )
            for r in active
        ],
        dynamic_partitions_requests=[task_partitions.build_add_request(new_tasks)] if new_tasks else [],
    )

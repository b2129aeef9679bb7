"""The `ft-pipeline` command line: demo data, the main job, training, status, lineage, rollback and generation."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Sequence

from ft_pipeline.settings import Settings


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Write demo logs into the inbox."""
    from ft_pipeline.core.demo import write_demo_inbox

    summary = write_demo_inbox(settings.inbox_dir, records=args.records, days=args.days, seed=args.seed)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Materialize the selection for every partition with data, then print a summary."""
    from ft_pipeline.core import manifest
    from ft_pipeline.core.ingest import inbox_entries
    from ft_pipeline.core.spool import recover_spools
    from ft_pipeline.runner import run_pipeline

    recovered = recover_spools(settings.inbox_dir)
    if recovered:
        print(f"recovered {len(recovered)} spool file(s) of dead writers into the inbox")
    # an inbox of unreadable files is not empty, nor one whose files were all ingested and archived
    if args.demo_if_empty and not inbox_entries(settings.inbox_dir) and not manifest.load(settings.state_dir):
        print(f"the inbox {settings.inbox_dir} is empty: writing demo logs")
        cmd_demo(argparse.Namespace(records=3000, days=30, seed=0), settings)
    runs = run_pipeline(args.select, settings=settings)
    print_summary(settings)
    failed = [run for run in runs if not run.success]
    for run in failed:
        print(f"run {run.run_id} ({', '.join(run.assets)} for {run.partitions}) failed in {', '.join(run.failed_steps)}")
    print("\nOpen the Dagster UI with `make ui` and browse http://127.0.0.1:3000 (runs, assets, metadata, checks).")
    return 1 if failed else 0


def print_summary(settings: Settings) -> None:
    """Print what the lake, the report and each task's champion hold now."""
    from ft_pipeline.training.status import task_status

    print("\n== ft_pipeline summary ==")
    print(f"data dir:       {settings.root}")
    report = settings.reports_dir / "pattern_report.json"
    if report.is_file():
        totals = json.loads(report.read_text(encoding="utf-8")).get("totals", {})
        print(f"pattern report: {report} ({totals})")
    for row in task_status(settings):
        champion = row.get("champion_version")
        print(
            f"task {row['task']}: {row['settled']} settled, champion "
            f"{'v' + str(champion) if champion else 'none'}"
            + (
                f", eval loss {row['champion_scores'].get('loss'):.3f} vs base {row['champion_scores'].get('base_loss'):.3f}"
                if champion and row.get("champion_scores")
                else ""
            )
        )


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """Train one task's adapter, or its segments' adapters, without Dagster."""
    if args.segments or args.segment:
        from ft_pipeline.training.segments import train_segments

        report = train_segments(settings, args.task, segments=args.segment, log=lambda msg: print(msg, flush=True))
        print(json.dumps(report, indent=2, default=str))
        return 1 if report["failed"] else 0
    from ft_pipeline.training.lora import main as train_main

    return train_main(["--task", args.task, "--data-dir", str(settings.root)])


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print per-task data, retrain and champion status, and the pattern report's failing alert checks."""
    from ft_pipeline.training.status import report_alerts, segment_status, task_status

    if args.segment and not args.task:
        raise ValueError("--segment needs --task")
    rows, alerts = task_status(settings), report_alerts(settings)
    if args.task:
        rows = [row for row in rows if row["task"] == args.task]
        if not rows:
            raise LookupError(f"no task {args.task!r} in the lake, the datasets or the adapters")
        if args.segment:
            rows[0]["segments"] = segment_status(settings, args.task, args.segment)
    rollouts = rollout_states(settings, [row["task"] for row in rows])
    if args.json:
        print(json.dumps({"tasks": rows, "alerts": alerts, "rollouts": rollouts}, indent=2, default=str))
        return 0
    from ft_pipeline.training.base_model import describe_identity

    header = f"{'task':<20} {'settled':>8} {'new':>6} {'to retrain':>10} {'champion':>9}  {'last trained':<32}  champion base"
    print(header)
    for row in rows:
        base = describe_identity(row["champion_base"]) if row.get("champion_version") else "-"
        print(
            f"{row['task']:<20} {row['settled']:>8} {row['new_examples']:>6} {row['until_retrain']:>10} "
            f"{row.get('champion_version') or '-':>9}  {row.get('last_trained') or '-':<32}  {base}"
        )
        if args.task:
            print_segments(row, settings)
    if rollouts:
        print("\nrollouts:")
    for task, state in rollouts.items():
        print(f"  {task}: {rollout_line(state)}")
    if alerts["report"] is None:
        print("\nalerts: no pattern report yet")
        return 0
    print(f"\nalerts (pattern report as of {alerts['as_of']}, built {alerts['generated_at']}): ", end="")
    print(f"{len(alerts['failing'])} failing" if alerts["failing"] else "all checks pass")
    for name, findings in alerts["failing"].items():
        for finding in findings:
            print(f"  FAILED {name}: {finding}")
    return 0


def print_segments(row: dict, settings: Settings) -> None:
    """The segments table of one task's status row."""
    if not settings.segment_by:
        print("  segments: off (set FT_SEGMENT_BY)")
        return
    segments = row.get("segments") or []
    print(f"\n  segments by {settings.segment_by}: {len(segments)}")
    print(
        f"  {'segment':<24} {'settled':>8} {'new':>5} {'to train':>8} {'champion':>9} {'eval loss':>9}  quality avg/min/max  top topics"
    )
    for seg in segments:
        scores, quality = seg["champion_scores"] or {}, seg["quality"]
        spread = "/".join("-" if quality[k] is None else f"{quality[k]:.2f}" for k in ("mean", "min", "max"))
        loss = f"{scores['loss']:.3f}" if scores.get("loss") is not None else "-"
        topics = ", ".join(f"{t['topic']} ({t['n']})" for t in seg["top_topics"]) or "-"
        print(
            f"  {seg['segment']:<24} {seg['settled']:>8} {seg['new_examples']:>5} {seg['until_retrain']:>8} "
            f"{seg['champion_version'] or '-':>9} {loss:>9}  {spread:<19}  {topics}"
        )


def rollout_states(settings: Settings, tasks: list[str]) -> dict[str, dict]:
    """The latest rollout of each task that had one."""
    from ft_pipeline.serve.rollout import read_rollout

    states = {task: read_rollout(settings, task) for task in tasks}
    return {task: state.to_dict() for task, state in states.items() if state is not None}


def rollout_line(state: dict) -> str:
    """A rollout in one line: candidate against champion, stage, status."""
    stages = ",".join(f"{s:g}" for s in state["stages"])
    held = ", held by hand" if state["paused"] and state["status"] == "active" else ""
    return (
        f"v{state['candidate']} against champion v{state['champion']}: {state['status']}{held} at {state['percent']:g}% "
        f"(stages {stages}), since {state['started_at']}"
    )


def cmd_rollout(args: argparse.Namespace, settings: Settings) -> int:
    """Show a task's rollout, or advance, hold or abort it by hand."""
    from ft_pipeline.serve.rollout import act_by_hand, describe

    action = next((name for name in ("advance", "hold", "abort") if getattr(args, name)), None)
    if action is not None:
        done = act_by_hand(settings, args.task, action, args.reason)
        print(f"{args.task}: {done['action']}: {rollout_line(done['rollout'])}")
        return 0
    shown = describe(settings, args.task)
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
        return 0
    if shown["rollout"] is None:
        print(f"{args.task}: no rollout yet")
        return 0
    print(f"{args.task}: {rollout_line(shown['rollout'])}")
    if shown["next"]:
        evidence = shown["next"]["evidence"]
        for arm in ("candidate", "champion"):
            e = evidence[arm]
            acceptance = "-" if e["acceptance_rate"] is None else f"{e['acceptance_rate']:.1%}"
            p95 = "-" if e["latency_p95_ms"] is None else f"{e['latency_p95_ms']:.0f} ms"
            print(
                f"  {arm:<9} calls {e['calls']:>6}  reviewed {e['reviewed']:>5} ({e['stage_reviewed']} this stage)  "
                f"acceptance {acceptance:>6}  rejected {e['rejected']:>5}  latency p95 {p95}"
            )
        print(f"  next automatic step: {shown['next']['action']}: {shown['next']['reason']}")
    for step in shown["steps"]:
        print(f"  {step['at']}  {step['action']:<17} {step.get('stage', '-'):>5}%  by {step.get('by', '-')}: {step['reason']}")
    return 0


def cmd_lineage(args: argparse.Namespace, settings: Settings) -> int:
    """Print what an adapter was built from; with --ids, the log ids of one split it was built from."""
    import os

    # the lineage comes from artifacts of the MLflow run; their download bars would mix with the printed ids
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from ft_pipeline.training.base_model import describe_identity
    from ft_pipeline.training.status import adapter_lineage
    from ft_pipeline.training.tracking import trained_log_ids

    lineage = adapter_lineage(settings, args.task, args.version)
    if args.ids:
        for log_id in trained_log_ids(settings, lineage["mlflow_run_id"], args.split):
            print(log_id)
        return 0
    if args.json:
        print(json.dumps(lineage, indent=2, default=str))
        return 0
    counts = lineage["log_ids"]
    print(f"adapter:          {lineage['task']} v{lineage['version']} (trained {lineage['trained_at']})")
    print(f"dataset version:  {lineage['dataset_version']}")
    print(f"data watermark:   {lineage['data_watermark']}")
    print("log ids:          " + ", ".join(f"{split} {n if n is not None else '?'}" for split, n in counts.items()))
    if lineage["split"]:
        split = lineage["split"]
        print(f"split:            by {split['group_by']}, dev share {split['dev_share']}, test share {split['test_share']}")
    print(f"base model:       {describe_identity(lineage['base_identity'])}")
    print(f"MLflow run:       {lineage['mlflow_run_id']}")
    print(f"Dagster run:      {lineage['dagster_run_id'] or '- (trained outside Dagster)'}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Move a task's champion alias back and record why; a rollout in progress is aborted first."""
    from ft_pipeline.serve.rollout import act_by_hand, read_rollout
    from ft_pipeline.training.champion import rollback

    state = read_rollout(settings, args.task)
    if state is not None and state.active:
        # completing it later would move the champion from the version restored here
        act_by_hand(settings, args.task, "abort", f"aborted by a rollback: {args.reason}")
        print(f"{args.task}: aborted the rollout of v{state.candidate}")
    before, after = rollback(settings, args.task, to_version=args.to, reason=args.reason)
    print(f"{args.task}: champion moved from v{before} to v{after}")
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    """Answer a prompt with the segment's champion, else the task's, else the base model; stderr says which answered."""
    from ft_pipeline.training.serving import answer

    reply = answer(settings, args.task, args.prompt, max_new_tokens=args.max_new_tokens, segment=args.segment)
    print(reply.text)
    print(f"answered by {reply.served_by}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write a task's adapter as a merged model, an Ollama Modelfile or a vLLM LoRA module."""
    from pathlib import Path

    from ft_pipeline.training.export import export_adapter

    done = export_adapter(settings, args.task, args.format, Path(args.out), version=args.version, force=args.force)
    print(f"{done['task']} v{done['version']} exported as {done['format']} into {done['out']}")
    if "command" in done:
        print(done["command"])
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ft_pipeline.serve.app import serve

    serve(settings, args.host, args.port)
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from ft_pipeline.serve.keys import KeyStore

    store = KeyStore(settings.root)
    if args.action == "create":
        key, token = store.create(args.name, args.scope)
        print(f"created key {key.id} ({key.name}, scopes {','.join(key.scopes)}); its token, shown only now:\n{token}")
    elif args.action == "revoke":
        key = store.revoke(args.id)
        print(f"revoked key {key.id} ({key.name}) at {key.revoked_at}")
    else:
        for key in store.all():
            state = f"revoked {key.revoked_at}" if key.revoked_at else "active"
            print(f"{key.id}  {key.name:<24} {','.join(key.scopes):<28} created {key.created_at}  {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from ft_pipeline.training.export import FORMATS as EXPORT_FORMATS

    parser = argparse.ArgumentParser(prog="ft-pipeline", description=__doc__)
    parser.add_argument("--data-dir", help="data dir (default: $FT_DATA_DIR or ./data)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="write realistic demo logs into the inbox")
    demo.add_argument("--records", type=int, default=3000)
    demo.add_argument("--days", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="materialize assets for every partition with data (the main job)")
    run.add_argument("--select", default="*", help="Dagster asset selection, e.g. 'raw_logs+' or 'raw_logs,settlements'")
    run.add_argument("--demo-if-empty", action="store_true", help="write demo logs first when the inbox is empty")
    run.set_defaults(func=cmd_run)

    train = sub.add_parser("train", help="train one task's LoRA adapter without Dagster")
    train.add_argument("--task", required=True)
    train.add_argument(
        "--segments", action="store_true", help="train every due segment of the task (FT_SEGMENT_BY), base loaded once"
    )
    train.add_argument("--segment", action="append", help="train this segment (its key); repeatable")
    train.set_defaults(func=cmd_train)

    status = sub.add_parser("status", help="per-task examples, retrain countdown and champion")
    status.add_argument("--json", action="store_true")
    status.add_argument("--task", help="one task, with a row per segment (FT_SEGMENT_BY)")
    status.add_argument("--segment", help="with --task: only this segment (its value or key)")
    status.set_defaults(func=cmd_status)

    lineage = sub.add_parser("lineage", help="what an adapter was built from: dataset, watermark, log ids, base, runs")
    lineage.add_argument("task")
    lineage.add_argument("version", nargs="?", type=int, help="adapter version (default: the champion, else the newest)")
    lineage.add_argument("--ids", action="store_true", help="print the log ids of one split instead, one per line")
    lineage.add_argument("--split", choices=["train", "dev", "test"], default="train", help="the split --ids lists")
    lineage.add_argument("--json", action="store_true")
    lineage.set_defaults(func=cmd_lineage)

    rollback = sub.add_parser("rollback", help="move a task's champion alias back")
    rollback.add_argument("task")
    rollback.add_argument("--to", type=int, help="version to restore (default: the previous champion)")
    rollback.add_argument("--reason", default="manual rollback from the CLI")
    rollback.set_defaults(func=cmd_rollback)

    rollout = sub.add_parser("rollout", help="a task's staged rollout: show it, or advance, hold or abort it by hand")
    rollout.add_argument("task")
    by_hand = rollout.add_mutually_exclusive_group()
    by_hand.add_argument("--advance", action="store_true", help="move to the next stage (after the last: complete)")
    by_hand.add_argument("--hold", action="store_true", help="stop automatic advances (automatic rollback stays on)")
    by_hand.add_argument("--abort", action="store_true", help="end the rollout; the champion stays")
    rollout.add_argument("--reason", default="", help="why, for the alias history")
    rollout.add_argument("--json", action="store_true", help="print the state, evidence and steps as JSON")
    rollout.set_defaults(func=cmd_rollout)

    generate = sub.add_parser("generate", help="answer a prompt with the task's champion adapter")
    generate.add_argument("task")
    generate.add_argument("prompt")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument(
        "--segment", help="the user, agent or topic (FT_SEGMENT_BY) asking: its own champion answers when it has one"
    )
    generate.set_defaults(func=cmd_generate)

    export = sub.add_parser("export", help="write a task's adapter for other engines: merged model, Ollama, vLLM")
    export.add_argument("task")
    export.add_argument("--version", type=int, help="adapter version (default: the champion, else the newest)")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("--out", required=True, help="folder to write; must be new or empty")
    export.add_argument("--force", action="store_true", help="replace what --out holds")
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="run the HTTP capture API (POST /v1/logs, /healthz, /metrics)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address; beyond loopback every request needs an API key")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage the HTTP API's bearer keys (stored hashed)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="make a key and print its token once")
    create.add_argument("name")
    create.add_argument("--scope", action="append", required=True, help="log, feedback, read or generate; repeatable")
    key_actions.add_parser("list", help="every key with its scopes and state, never a token")
    revoke = key_actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    keys.set_defaults(func=cmd_keys)
    return parser


# What a user can cause and fix: a bad name or value, a missing or unreadable file, a file in the wrong format
# (a corrupt checkpoint or adapter: pickle, safetensors and JSON errors are ValueErrors, EOFErrors or UnpicklingErrors).
USER_ERRORS = (ValueError, LookupError, OSError, EOFError, pickle.UnpicklingError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ft-pipeline` console script: exit code 2 and one line for a user error, a traceback only with --debug."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(data_dir=args.data_dir)
        return args.func(args, settings)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"ft-pipeline {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"ft-pipeline {args.command}: internal error {type(exc).__name__}: {_one_line(exc)} (--debug shows where)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its message with newlines folded, its type when it has no message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


if __name__ == "__main__":
    sys.exit(main())

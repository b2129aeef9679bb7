"""The logging client applications import to write interaction records into the pipeline's inbox."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ft_pipeline.core.schema import CALL_CONTRACT, FEEDBACK_CONTRACT, KIND_FIELD, LineLimits, judge_line, record_problems
from ft_pipeline.core.spool import PUBLISHED_PREFIX, SPOOL_DIR, new_spool_name, publish_spool, recover_spools
from ft_pipeline.settings import Settings

if TYPE_CHECKING:
    from ft_pipeline.http_client import HttpSender


class RecordRejected(ValueError):
    """A record the contract refuses, with the reason code ingest would quarantine it under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"log record breaks the contract: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class RecordKind:
    """What sets a kind of record apart: its name, contract, the field that says when, whether a log_id is made up, its route."""

    name: str
    contract: str
    stamp_field: str
    new_id: bool
    route: str


# feedback names the call it is on, so only a call may get a fresh log_id
CALL = RecordKind("call", CALL_CONTRACT, "timestamp", True, "/v1/logs")
FEEDBACK = RecordKind("feedback", FEEDBACK_CONTRACT, "feedback_at", False, "/v1/feedback")
KINDS = (CALL, FEEDBACK)


def encode_record(record: dict[str, Any], first_day: str, limits: LineLimits, kind: RecordKind = CALL) -> tuple[str, bytes]:
    """A record of `kind` as the inbox line ingest will read (log_id of a call and the time filled when missing) and its
    log_id; RecordRejected otherwise."""
    record = dict(record)
    # a call is the default kind of a line: its lines stay as they always were, any other kind says what it is
    if kind is not CALL:
        record.setdefault(KIND_FIELD, kind.name)
    if kind.new_id and record.get("log_id") is None:
        record["log_id"] = uuid.uuid4().hex
    stamp = record.get(kind.stamp_field)
    if stamp is None:
        record[kind.stamp_field] = datetime.now(UTC).isoformat()
    elif isinstance(stamp, datetime):
        # the contract reads a naive time as UTC; say so explicitly in the file
        record[kind.stamp_field] = (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).isoformat()
    problems = record_problems(record, kind.contract)
    if problems:
        raise RecordRejected(problems[0][0], "; ".join(f"{code} ({detail})" for code, detail in problems))
    try:
        data = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise RecordRejected("not_serialisable", f"not serialisable as UTF-8 JSON: {exc}") from None
    # the line as ingest will read it, judged by ingest's own rules: limits, keys, the partitions' days
    verdict = judge_line(data, first_day, datetime.now(UTC).date().isoformat(), limits)
    if verdict.reason:
        raise RecordRejected(verdict.reason, f"{verdict.reason} ({verdict.detail})")
    return record["log_id"], data


class LogWriter:
    """Checks records against the contract and publishes them into the inbox as whole files, safe across processes."""

    def __init__(
        self,
        inbox_dir: str | Path | None = None,
        flush_every: int = 1000,
        flush_seconds: float = 60.0,
        *,
        url: str | None = None,
        token: str | None = None,
        spool_dir: str | Path | None = None,
        block_seconds: float = 2.0,
    ):
        """Write into `inbox_dir`, or with `url` send to an `ft-pipeline serve` from a background thread.

        In HTTP mode records go in batches of `flush_every` (at most every `flush_seconds`), failed sends are
        retried with backoff and kept in `spool_dir` meanwhile (bounded), and flush() and close() wait at most
        `block_seconds`: the application is never held up by the server.
        """
        if flush_every < 1:
            raise ValueError("flush_every must be at least 1")
        if (inbox_dir is None) == (url is None):
            raise ValueError("give either inbox_dir or url")
        settings = Settings.from_env()
        self.first_day, self.limits = settings.partitions_start, settings.line_limits
        self.block_seconds = block_seconds
        self._http: HttpSender | None = None
        if url is not None:
            from ft_pipeline.http_client import HttpSender

            folder = Path(spool_dir) if spool_dir else Path.home() / ".cache" / "ft_pipeline" / "http-spool"
            self._http = HttpSender(url, token, folder, batch_size=min(flush_every, 1000), flush_seconds=min(flush_seconds, 5.0))
            self._closed = False
            return
        assert inbox_dir is not None
        self.inbox_dir = Path(inbox_dir)
        self.spool_dir = self.inbox_dir / SPOOL_DIR
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.published: list[Path] = []
        # a writer killed before it published left its records in the spool: they reach the inbox now, not never
        self.recovered: list[Path] = recover_spools(self.inbox_dir)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fh: BinaryIO | None = None
        self._spool: Path | None = None
        self._pending = 0
        self._opened_at = 0.0
        self._closed = False

    def write(self, record: dict[str, Any]) -> str:
        """Validate one call record (filling log_id and timestamp when missing), spool it, and return its log_id."""
        return self._write(record, CALL)

    def feedback(
        self,
        log_id: str,
        decision: str | None = None,
        final_output: str | None = None,
        user_rating: float | None = None,
        quality_score: float | None = None,
        comment: str | None = None,
        reviewer: str | None = None,
        feedback_at: str | datetime | None = None,
        **extra: Any,
    ) -> None:
        """Validate and spool feedback on the call `log_id` (feedback_at now when not given); RecordRejected if it breaks the contract."""
        given = {
            "decision": decision,
            "final_output": final_output,
            "user_rating": user_rating,
            "quality_score": quality_score,
            "comment": comment,
            "reviewer": reviewer,
            "feedback_at": feedback_at,
        }
        self._write({"log_id": log_id, **{name: value for name, value in given.items() if value is not None}, **extra}, FEEDBACK)

    def _write(self, record: dict[str, Any], kind: RecordKind) -> str:
        """Encode one record of `kind`, spool it (HTTP mode: queue it for its route), and return its log_id."""
        log_id, line = encode_record(record, self.first_day, self.limits, kind)
        if self._http is not None:
            if self._closed:
                raise ValueError("this LogWriter is closed")
            self._http.submit(line, kind)
        else:
            self.write_lines([line])
        return log_id

    def write_lines(self, lines: list[bytes], sync: bool = False) -> None:
        """Spool lines that `encode_record` made, in one write; with `sync`, durable on disk before this returns."""
        with self._lock:
            if self._closed:
                raise ValueError("this LogWriter is closed")
            self._adopt_after_fork()
            fh = self._fh or self._open_spool()
            fh.write(b"".join(lines))
            # nothing stays in this process's buffer, so a fork cannot write the same line twice
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
            self._pending += len(lines)
            # there is no background thread: an idle writer publishes on its next write, flush() or close()
            if self._pending >= self.flush_every or time.monotonic() - self._opened_at >= self.flush_seconds:
                self._publish()

    def publish_if_due(self) -> Path | None:
        """Publish the spool when it has waited flush_seconds (for callers with a timer, such as the HTTP server)."""
        with self._lock:
            self._adopt_after_fork()
            if self._fh is not None and time.monotonic() - self._opened_at >= self.flush_seconds:
                return self._publish()
            return None

    @property
    def pending(self) -> int:
        """Records spooled and not yet published."""
        return self._pending

    def flush(self) -> Path | None:
        """Publish the spooled records into the inbox now (HTTP mode: send them, waiting at most block_seconds); the new inbox file, if any."""
        if self._http is not None:
            self._http.flush(self.block_seconds)
            return None
        with self._lock:
            self._adopt_after_fork()
            return self._publish()

    def close(self) -> None:
        """Publish what is spooled (HTTP mode: send it within block_seconds, keep the rest on disk); later writes raise."""
        if self._http is not None:
            if not self._closed:
                self._closed = True
                self._http.close(self.block_seconds)
            return
        with self._lock:
            if not self._closed:
                self._adopt_after_fork()
                self._publish()
                self._closed = True

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _adopt_after_fork(self) -> None:
        # a forked child inherits the parent's open spool file; the parent publishes it, the child starts its own
        if os.getpid() != self._pid:
            if self._fh is not None:
                self._fh.close()
            self._pid, self._fh, self._spool, self._pending = os.getpid(), None, None, 0

    def _open_spool(self) -> BinaryIO:
        """Start a new spool file of this process."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._spool = self.spool_dir / new_spool_name(os.getpid())
        self._fh = open(self._spool, "xb")
        self._opened_at = time.monotonic()
        return self._fh

    def _publish(self) -> Path | None:
        """Move the spool file into the inbox under a unique name (one rename, so readers see all or nothing)."""
        if self._fh is None or self._spool is None:
            return None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        target = publish_spool(self._spool, self.inbox_dir, PUBLISHED_PREFIX, os.getpid())
        self._fh, self._spool, self._pending = None, None, 0
        self.published.append(target)
        return target


_default: LogWriter | None = None
_default_lock = threading.Lock()


def default_writer() -> LogWriter:
    """The process's shared writer: to the server at FT_LOG_URL when set, else into the inbox of FT_DATA_DIR; closed at exit."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            settings = Settings.from_env()
            if settings.log_url:
                _default = LogWriter(url=settings.log_url, token=settings.log_token or None, flush_every=100, flush_seconds=1.0)
            else:
                _default = LogWriter(settings.inbox_dir, flush_every=100, flush_seconds=30.0)
            atexit.register(_default.close)
        return _default


def log_interaction(**fields: Any) -> str:
    """Log one interaction through the default writer; returns its log_id."""
    return default_writer().write(fields)


def log_feedback(log_id: str, **fields: Any) -> None:
    """Log feedback on the call `log_id` through the default writer (the fields of `LogWriter.feedback`)."""
    default_writer().feedback(log_id, **fields)


def assign_variant(experiment_id: str, unit_id: str, weights: dict[str, float] | list[str]) -> str:
    """The experiment arm of a unit (user, session): a stable, uniform hash of both ids cut by the arms' weights."""
    arms = list(weights.items()) if isinstance(weights, dict) else [(arm, 1.0) for arm in weights]
    if not arms or any(w < 0 for _, w in arms) or sum(w for _, w in arms) <= 0:
        raise ValueError(f"weights must name at least one arm with non-negative weights summing above 0: {weights!r}")
    digest = hashlib.sha256(f"{experiment_id}\x1f{unit_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(w for _, w in arms)
    cumulative = 0.0
    for arm, weight in arms:
        cumulative += weight
        if weight > 0 and point < cumulative:
            return arm
    # float rounding can leave the point a hair above the last boundary
    return [arm for arm, weight in arms if weight > 0][-1]

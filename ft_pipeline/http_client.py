"""The HTTP mode of the logging client: batches sent from a background thread, retried, spooled to disk while the server is away."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from ft_pipeline.client import CALL, KINDS, RecordKind
from ft_pipeline.core.spool import SPOOL_SUFFIX, new_spool_name, process_alive, spool_owner

log = logging.getLogger("ft_pipeline.client")
READY_PREFIX = "backlog-"  # a closed sender's backlog, for whichever sender starts next


class HttpSender:
    """Sends encoded record lines to their kind's route (`POST <url>/v1/logs`, `/v1/feedback`); the caller never waits on the network."""

    def __init__(
        self,
        url: str,
        token: str | None,
        spool_dir: Path,
        batch_size: int = 100,
        flush_seconds: float = 1.0,
        max_queue: int = 10_000,
        max_spool_bytes: int = 64 << 20,
        timeout: float = 10.0,
        max_backoff: float = 30.0,
    ):
        self.url = url.rstrip("/")
        self.token = token
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.flush_seconds, self.timeout, self.max_backoff = batch_size, flush_seconds, timeout, max_backoff
        self.max_spool_bytes = max_spool_bytes
        self.sent = 0
        self.rejected = 0  # refused by the server (its limits may be stricter than this client's)
        self.dropped = 0  # neither sent nor kept: the spool was full
        self._queue: queue.Queue[tuple[RecordKind, bytes]] = queue.Queue(maxsize=max_queue)
        # calls are kept in spool_dir itself, as they always were; each other kind in a folder of its name, made when needed
        self._folders = {kind: self.spool_dir if kind is CALL else self.spool_dir / kind.name for kind in KINDS}
        self._backlogs = {kind: folder / new_spool_name(os.getpid()) for kind, folder in self._folders.items()}
        self._disk = threading.Lock()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ft-pipeline-http-sender", daemon=True)
        self._thread.start()

    def submit(self, line: bytes, kind: RecordKind = CALL) -> None:
        """Queue one line of `kind`; when the queue is full, append it to the disk spool instead (or count it dropped)."""
        self._idle.clear()
        try:
            self._queue.put_nowait((kind, line))
        except queue.Full:
            self._spill(kind, [line])

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until everything queued and spooled was sent; whether it was."""
        self._idle.clear()
        return self._idle.wait(timeout)

    def close(self, timeout: float) -> None:
        """Send what can be sent within `timeout`, then keep the rest on disk for the next sender."""
        self.flush(timeout)
        self._stop.set()
        self._thread.join(max(timeout, 0.1))
        for kind, lines in by_kind(self._drain(None)).items():
            self._spill(kind, lines)
        self._retire_backlog()

    def _retire_backlog(self) -> None:
        """Hand this sender's backlog files over as ready ones (sent oldest first); new spills start fresh files."""
        with self._disk:
            for kind, backlog in self._backlogs.items():
                if backlog.exists():
                    ready = f"{READY_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
                    os.replace(backlog, self._folders[kind] / ready)

    def _drain(self, limit: int | None) -> list[tuple[RecordKind, bytes]]:
        lines: list[tuple[RecordKind, bytes]] = []
        while limit is None or len(lines) < limit:
            try:
                lines.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return lines

    def _spill(self, kind: RecordKind, lines: list[bytes]) -> None:
        """Append lines of `kind` to this sender's disk spool, as many as fit under max_spool_bytes (all kinds together)."""
        if not lines:
            return
        with self._disk:
            folders = [folder for folder in self._folders.values() if folder.is_dir()]
            used = sum(p.stat().st_size for folder in folders for p in folder.iterdir() if p.is_file())
            kept = []
            for line in lines:
                if used + len(line) > self.max_spool_bytes:
                    self.dropped += 1
                    continue
                kept.append(line)
                used += len(line)
            if self.dropped:
                log.warning("HTTP log spool %s is full: %d record(s) dropped so far", self.spool_dir, self.dropped)
            if kept:
                self._folders[kind].mkdir(exist_ok=True)
                with open(self._backlogs[kind], "ab") as fh:
                    fh.write(b"".join(kept))
                    fh.flush()
                    os.fsync(fh.fileno())

    def _spooled_files(self, kind: RecordKind) -> list[Path]:
        """Backlog files of `kind` ready to send: closed senders' and those of dead processes of this host."""
        folder = self._folders[kind]
        return [
            path
            for path in (sorted(folder.iterdir()) if folder.is_dir() else [])
            if path.name.startswith(READY_PREFIX)
            or (
                path.name.endswith(SPOOL_SUFFIX)
                and (owner := spool_owner(path.name)) is not None
                and not process_alive(owner.pid)
            )
        ]

    def _send_backlog(self) -> None:
        """Send spooled files oldest first, a batch at a time, without holding the disk lock over the network."""
        self._retire_backlog()
        for kind in KINDS:
            for path in self._spooled_files(kind):
                try:
                    lines = path.read_bytes().splitlines(keepends=True)
                except FileNotFoundError:  # another sender took it
                    continue
                # a line torn by a crash mid-append cannot be sent as JSON; the rest can. A failure part way leaves the
                # file whole, so its first batches go twice: ingest keeps one copy of each record
                whole = [line for line in lines if line.endswith(b"\n")]
                for start in range(0, len(whole), self.batch_size):
                    self._post(kind, whole[start : start + self.batch_size])
                path.unlink(missing_ok=True)

    def _post(self, kind: RecordKind, lines: list[bytes]) -> None:
        """One request to the route of `kind`; raises OSError (network, 5xx, 408, 429, auth) to retry later."""
        body = b'{"records": [' + b",".join(line.rstrip(b"\n") for line in lines) + b"]}"
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + kind.route, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            results = json.loads(response.read())["results"]
        refused = [r for r in results if r["status"] != "accepted"]
        self.sent += len(results) - len(refused)
        if refused:
            self.rejected += len(refused)
            reasons = sorted({r["reason"] for r in refused})
            log.warning("the log server rejected %d record(s): %s", len(refused), ", ".join(reasons))

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if backoff:
                self._stop.wait(backoff)
                if self._stop.is_set():
                    return
            try:
                first = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                first = None
            unsent = by_kind(([first] if first is not None else []) + self._drain(self.batch_size - 1))
            try:
                self._send_backlog()
                for kind, lines in list(unsent.items()):
                    self._post(kind, lines)
                    del unsent[kind]
                backoff = 0.0
            except (OSError, ValueError, KeyError) as exc:  # URLError and HTTPError are OSErrors
                for kind, lines in unsent.items():
                    self._spill(kind, lines)
                backoff = min(max(backoff * 2, 0.5), self.max_backoff)
                log.warning("could not reach the log server at %s (%s); retrying in %.1f s", self.url, _reason(exc), backoff)
                continue
            if (
                self._queue.empty()
                and not any(backlog.exists() for backlog in self._backlogs.values())
                and not any(self._spooled_files(kind) for kind in KINDS)
            ):
                self._idle.set()


def by_kind(items: list[tuple[RecordKind, bytes]]) -> dict[RecordKind, list[bytes]]:
    """Lines grouped by their kind, each group in the order given."""
    groups: dict[RecordKind, list[bytes]] = {}
    for kind, line in items:
        groups.setdefault(kind, []).append(line)
    return groups


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    return type(exc).__name__ if not str(exc) else str(exc)[:200]

"""The capture API under load: 50,000 calls and 50,000 feedbacks from concurrent clients, and a SIGKILL of the server midway."""

import contextlib
import json
import queue
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pyarrow.parquet as pq

from ft_pipeline.client import KINDS
from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import partition_dates, partition_file
from ft_pipeline.core.spool import RECOVERED_PREFIX
from ft_pipeline.settings import Settings
from ft_pipeline_tests.processes import free_port
from ft_pipeline_tests.serve.server import start_server

CALLS = FEEDBACKS = 50_000
BATCH = 500
CLIENTS = 8
BAD_EVERY = 7  # every 7th batch also carries bad records
KILL_AFTER = 0.4  # the share of batches answered before the server is killed
# the first server never publishes on its own, so every record it acknowledged is still in its spool when it is killed
HOLD_SPOOL = {"FT_SERVE_PUBLISH_EVERY": str(10**9), "FT_SERVE_PUBLISH_SECONDS": "3600"}
# the second publishes a few big files: ingest pays a fixed cost per file, and this test is about the server
FEW_FILES = {"FT_SERVE_PUBLISH_EVERY": "25000", "FT_SERVE_PUBLISH_SECONDS": "3600"}
KIND_OF = {kind.route: kind.name for kind in KINDS}  # a feedback line says its kind, a call's says nothing


def make_batches(day: str) -> list[tuple[str, list[dict], list[tuple[str, str]]]]:
    """Call and feedback batches, interleaved: (route, records, the answer expected for each: status and log_id or reason)."""
    batches = []
    for b in range(CALLS // BATCH):
        ids = [f"c{i}" for i in range(b * BATCH, (b + 1) * BATCH)]
        calls = [
            {"log_id": i, "timestamp": f"{day}T08:00:00Z", "task": "qa", "prompt": f"question {i}", "output": "an answer"}
            for i in ids
        ]
        feedback = [{"log_id": i, "feedback_at": f"{day}T09:00:00Z", "decision": "accepted", "reviewer": "ana"} for i in ids]
        call_answers = [("accepted", i) for i in ids]
        feedback_answers = list(call_answers)
        if b % BAD_EVERY == 0:
            calls += [
                {"log_id": f"bad-c{b}", "task": "qa", "output": "no prompt"},
                {**calls[0], "log_id": f"bad-t{b}", "task": "../x"},
            ]
            call_answers += [("rejected", "missing_field:prompt"), ("rejected", "bad_task_name")]
            feedback += [
                {**feedback[0], "log_id": f"bad-f{b}", "user_rating": 9},
                {"log_id": f"bad-e{b}", "feedback_at": f"{day}T09:00:00Z"},
            ]
            feedback_answers += [("rejected", "out_of_range:user_rating"), ("rejected", "empty_feedback")]
        batches += [("/v1/logs", calls, call_answers), ("/v1/feedback", feedback, feedback_answers)]
    return batches


def answer_of(result: dict) -> tuple[str, str]:
    return (result["status"], result["log_id"] if result["status"] == "accepted" else result["reason"])


def whole_records(path) -> list[dict]:
    """The records of a published file; a line the kill tore (never acknowledged) is left to ingest to quarantine."""
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def lake_ids(settings: Settings, table: str) -> Counter:
    """How many rows of each log_id a lake table holds."""
    return Counter(
        log_id
        for day in partition_dates(settings.lake_dir, table)
        for log_id in pq.read_table(partition_file(settings.lake_dir, table, day), columns=["log_id"])["log_id"].to_pylist()
    )


def test_concurrent_clients_lose_nothing_acknowledged_across_a_killed_server(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    batches = make_batches(datetime.now(UTC).date().isoformat())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    todo: queue.Queue[int] = queue.Queue()
    for index in range(len(batches)):
        todo.put(index)
    answers: dict[int, httpx.Response] = {}
    before_kill: set[int] = set()  # batches answered before the kill began: by the first server, still in its spool
    killing = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                route, records, _ = batches[index]
                while True:
                    try:
                        response = http.post(url + route, json={"records": records})
                        break
                    except httpx.TransportError:  # killed mid-request or not up again yet: the batch goes again
                        time.sleep(0.05)
                with lock:
                    answers[index] = response
                    if not killing.is_set():
                        before_kill.add(index)

    first = start_server(tmp_path, port, **HOLD_SPOOL)
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    while len(answers) < KILL_AFTER * len(batches) and any(thread.is_alive() for thread in threads):
        time.sleep(0.01)
    with lock:  # every batch answered until now counts as answered before the kill
        killing.set()
    first.kill()
    first.wait()  # reaped: a zombie would still look alive to the spool recovery
    second = start_server(tmp_path, port, **FEW_FILES)
    for thread in threads:
        thread.join()
    second.terminate()  # a clean stop: the server publishes its spool
    second.wait()

    # every record was answered, in order, with what its content deserves
    assert len(answers) == len(batches)
    assert {response.status_code for response in answers.values()} == {200}
    assert all([answer_of(r) for r in answers[i].json()["results"]] == expected for i, (_, _, expected) in enumerate(batches))
    assert KILL_AFTER * len(batches) <= len(before_kill) < len(batches)
    # the second server published the killed one's spool at its start, whole: every record acknowledged before the kill
    recovered = [record for path in settings.inbox_dir.glob(f"{RECOVERED_PREFIX}-*.jsonl") for record in whole_records(path)]
    acknowledged = {
        (KIND_OF[batches[i][0]], status_id[1]) for i in before_kill for status_id in batches[i][2] if status_id[0] == "accepted"
    }
    assert acknowledged <= {(r.get("kind", "call"), r["log_id"]) for r in recovered}

    result = ingest(settings)
    assert set(result.quarantined) <= {"invalid_json"} and result.quarantined_total <= 1
    # exactly once in the lake, whatever was sent twice around the kill; nothing of a rejected record
    good = Counter(f"c{i}" for i in range(CALLS))
    assert lake_ids(settings, "raw_logs") == good
    assert lake_ids(settings, "feedback") == good
    assert (result.new, result.feedback_new, result.feedback_waiting) == (CALLS, FEEDBACKS, 0)

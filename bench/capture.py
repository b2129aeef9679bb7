"""Benchmark: records per second accepted by `POST /v1/logs` with 1, 8 and 32 concurrent clients, against LogWriter files.

    .venv/bin/python bench/capture.py --records 20000 --batch 100 --clients 1,8,32 --repeat 3

Generates realistic call records (about 700 bytes of JSON each, those of bench/ingest.py). For each client count, a
fresh `ft-pipeline serve` (its own process, on a free loopback port, a fresh data dir) takes the records from that many
threads, each sending its share in batches of --batch over its own keep-alive connection; the rate is the records
accepted over the wall time from the first request to the last answer, and p50/p95 are per request. The baseline writes
the same records one `LogWriter.write` at a time into an inbox in this process: the same contract checks and the same
spool, without HTTP. Rounds run every side in turn; each ratio is the median HTTP rate over the median file rate.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from ingest import make_record  # bench/ itself is on the path of a script run from it

from ft_pipeline.client import LogWriter

DAYS = 7


def records(count: int, seed: int = 0) -> list[dict]:
    """`count` call records of the last DAYS days."""
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=DAYS - 1)
    return [make_record(rng, start, DAYS - 1) for _ in range(count)]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """`ft-pipeline serve` on a free loopback port, once /healthz answers; the process and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ft_pipeline.cli", "--data-dir", str(data_dir), "serve", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the server exited with {proc.returncode}")


def over_http(data: list[dict], clients: int, batch: int, work: Path) -> dict:
    """Send `data` from `clients` threads to a fresh server: records accepted per second and request latencies."""
    proc, url = start_server(work / f"http-{clients}")
    shares = [data[i::clients] for i in range(clients)]
    latencies: list[float] = []
    accepted = [0] * clients
    lock = threading.Lock()

    def client(number: int) -> None:
        mine = shares[number]
        with httpx.Client(timeout=300) as http:
            for start in range(0, len(mine), batch):
                began = time.perf_counter()
                response = http.post(f"{url}/v1/logs", json={"records": mine[start : start + batch]})
                seconds = time.perf_counter() - began
                response.raise_for_status()
                accepted[number] += sum(r["status"] == "accepted" for r in response.json()["results"])
                with lock:
                    latencies.append(seconds)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    try:
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait()
    if sum(accepted) != len(data):
        raise RuntimeError(f"the server accepted {sum(accepted)} of {len(data)} records")
    cuts = statistics.quantiles(latencies, n=20, method="inclusive")
    return {"per_s": len(data) / seconds, "p50_ms": statistics.median(latencies) * 1000, "p95_ms": cuts[18] * 1000}


def to_files(data: list[dict], work: Path) -> float:
    """Write `data` one record at a time with LogWriter into an inbox: records per second."""
    start = time.perf_counter()
    with LogWriter(work / "files" / "inbox") as writer:
        for record in data:
            writer.write(record)
    return len(data) / (time.perf_counter() - start)


def run(count: int, batch: int, client_counts: list[int], repeat: int) -> dict[int, float]:
    """Time the file baseline and HTTP at each client count on the same records, `repeat` rounds in turn; print each
    round, the medians and their ratios."""
    data = records(count)
    work = Path(tempfile.mkdtemp(prefix="ft_bench_capture_"))
    files: list[float] = []
    http: dict[int, list[dict]] = {clients: [] for clients in client_counts}
    try:
        for round_no in range(1, repeat + 1):
            files.append(to_files(data, work / str(round_no)))
            for clients in client_counts:
                http[clients].append(over_http(data, clients, batch, work / str(round_no)))
            shown = ", ".join(f"{clients} client(s) {rounds[-1]['per_s']:,.0f}/s" for clients, rounds in http.items())
            print(f"round {round_no}: files {files[-1]:,.0f}/s, HTTP {shown}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = statistics.median(files)
    print(f"baseline LogWriter to files: {baseline:,.0f} records/s ({count:,} records, median of {repeat})")
    ratios = {}
    for clients, rounds in http.items():
        per_s, p50, p95 = (statistics.median(r[key] for r in rounds) for key in ("per_s", "p50_ms", "p95_ms"))
        ratios[clients] = per_s / baseline
        print(
            f"HTTP, {clients:>2} client(s), batches of {batch}: {per_s:,.0f} records/s, "
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms per request, ratio {ratios[clients]:.2f}"
        )
    return ratios


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="Records sent at each client count, and written to files.")
    parser.add_argument("--batch", type=int, default=100, help="Records per request.")
    parser.add_argument("--clients", default="1,8,32", help="Comma-separated counts of concurrent clients.")
    parser.add_argument("--repeat", type=int, default=1, help="Rounds of every side; the ratios compare medians.")
    args = parser.parse_args(argv)
    run(args.records, args.batch, [int(n) for n in args.clients.split(",")], args.repeat)


if __name__ == "__main__":
    main()

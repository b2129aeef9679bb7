"""Serving speed: requests/s and p50/p95 latency of the gateway's in-process backend at 1, 4 and 16 concurrent clients,
against a plain transformers `generate` loop on the same model and prompts, and the cost of switching adapters."""

# Run: .venv/bin/python bench/serve.py [--requests 48] [--max-tokens 32] [--threads 2] [--rounds 3]
# The builtin architecture (Llama, hidden 256, 4 layers, randomly initialised) with two LoRA adapters of random weights,
# loaded into the backend by name; greedy answers of a fixed length, so every request does the same work on both sides.

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from train import build_base, synthetic_rows  # bench/ itself is on the path of a script run from it

from ft_pipeline.serve.backends import InProcessBackend, Params
from ft_pipeline.settings import Settings
from ft_pipeline.training.base_model import load_base_model
from ft_pipeline.training.lora import wrap_lora

ADAPTERS = ("bench-a@1", "bench-b@1")
CLIENTS = (1, 4, 16)


def make_adapter(settings: Settings, folder: Path, seed: int) -> None:
    """A LoRA adapter with random (not zero) weights on the base, saved as peft saves a trained one."""
    model, _ = load_base_model(settings)
    torch.manual_seed(seed)
    model = wrap_lora(model, settings)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.save_pretrained(folder)


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    """Requests/s and p50/p95 latency in ms of one run."""
    cuts = statistics.quantiles(latencies, n=20, method="inclusive")
    return {"rps": len(latencies) / elapsed, "p50": cuts[9] * 1000, "p95": cuts[18] * 1000}


def run_backend(backend: InProcessBackend, chats: list, clients: int, models: list[str], params: Params) -> dict[str, float]:
    """`clients` threads send the chats to the backend (request i asks for models[i % len(models)]), each waiting for
    its answer before the next, as clients of the gateway do."""
    latencies: list[float] = []
    jobs = iter(range(len(chats)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(jobs, None)
            if i is None:
                return
            started = time.perf_counter()
            backend.complete(models[i % len(models)], chats[i], params)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, time.perf_counter() - started)


def run_plain(settings: Settings, adapter: Path, chats: list, max_tokens: int) -> dict[str, float]:
    """A plain loop: base + adapter with peft, the chat template, `generate` and decode, one request after another."""
    from peft import PeftModel

    model, tokenizer = load_base_model(settings)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()

    def answer(chat: list[dict[str, str]]) -> str:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return str(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

    latencies: list[float] = []

    def loop() -> None:
        answer(chats[0])  # warm-up, as the backend gets
        for chat in chats:
            begun = time.perf_counter()
            answer(chat)
            latencies.append(time.perf_counter() - begun)

    # in a thread of its own, as the backend's one client is: on a loaded machine torch ran several times slower
    # in the main thread than in a new one, which would credit the backend with the difference
    worker = threading.Thread(target=loop)
    started = time.perf_counter()
    worker.start()
    worker.join()
    return summary(latencies, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Build the model, adapters and prompts; time the plain loop, the backend at each concurrency, and switching."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=48, help="Requests per measurement.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of every measurement; medians are reported.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = synthetic_rows(max(args.requests, 64), seed=0)
    chats = [r["messages"][:2] for r in rows[: args.requests]]  # system prompt and question
    # random weights seldom produce the end token, so answers run to max_tokens on both sides alike
    params = Params(max_tokens=args.max_tokens, temperature=0)
    with tempfile.TemporaryDirectory() as tmp:
        build_base(rows, Path(tmp) / "base")
        settings = Settings(data_dir=tmp, base_model=str(Path(tmp) / "base"), device="cpu", lora_r=16, lora_alpha=32)
        folders = [Path(tmp) / name for name in ADAPTERS]
        for seed, folder in enumerate(folders):
            make_adapter(settings, folder, seed)
        backend = InProcessBackend(settings)
        for name, folder in zip(ADAPTERS, folders, strict=True):
            backend.load_adapter(name, str(folder))
        backend.complete(ADAPTERS[0], chats[0], params)  # warm-up: first-call allocations on both sides
        rounds: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):  # the sides take turns, so a noisy neighbour hits them alike
            rounds.setdefault("plain", []).append(run_plain(settings, folders[0], chats, args.max_tokens))
            for clients in CLIENTS:
                rounds.setdefault(str(clients), []).append(run_backend(backend, chats, clients, [ADAPTERS[0]], params))
            rounds.setdefault("switch", []).append(run_backend(backend, chats, 1, list(ADAPTERS), params))
    median = {key: {m: statistics.median(r[m] for r in runs) for m in runs[0]} for key, runs in rounds.items()}
    plain, switching = median["plain"], median["switch"]
    ours = {clients: median[str(clients)] for clients in CLIENTS}
    print(
        f"{args.requests} requests, {args.max_tokens} new tokens each, torch threads {args.threads}, "
        f"medians of {args.rounds} round(s)"
    )
    print(f"plain generate loop   : {plain['rps']:6.2f} req/s  p50 {plain['p50']:7.1f} ms  p95 {plain['p95']:7.1f} ms")
    for clients, row in ours.items():
        print(
            f"backend, {clients:2d} client(s) : {row['rps']:6.2f} req/s  p50 {row['p50']:7.1f} ms  p95 {row['p95']:7.1f} ms"
            f"  ({row['rps'] / plain['rps']:.2f}x the plain loop's req/s)"
        )
    cost = (1 / switching["rps"] - 1 / ours[1]["rps"]) * 1000
    print(
        f"two adapters alternating: {switching['rps']:6.2f} req/s against {ours[1]['rps']:.2f} for one "
        f"({cost:+.1f} ms per request, a switch on every request)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

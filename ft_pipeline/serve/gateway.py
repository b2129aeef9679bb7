"""The OpenAI-compatible gateway: `/v1/chat/completions` and `/v1/models`, each answer logged as a call for later feedback."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ft_pipeline.client import RecordRejected, encode_record
from ft_pipeline.core.io import TASK_NAME
from ft_pipeline.serve.backends import MODEL_NAME, Completion, InProcessBackend, Params, Route, UpstreamBackend, UpstreamError
from ft_pipeline.serve.rollout import CANDIDATE, CHAMPION, SHADOW, unit_of

ROLES = {"system", "user", "assistant", "tool"}
LOG_HEADER = "X-FT-Log-Id"


class BadRequest(ValueError):
    """A request body the gateway cannot answer, with the OpenAI-style parameter it is about."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(name, f"{name} must be a number from {low} to {high}")
    return float(value)


def parse_request(body: Any, max_tokens_limit: int) -> tuple[str, list[dict[str, str]], Params, bool, dict[str, Any]]:
    """Task, messages, generation parameters, stream flag and the other fields of a chat completion request."""
    if not isinstance(body, dict):
        raise BadRequest("body", "the body must be a JSON object")
    task = body.get("model")
    if not isinstance(task, str) or not MODEL_NAME.fullmatch(task):
        raise BadRequest("model", "model must be a task name (see GET /v1/models) or a loaded <task>@<version>")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "messages must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise BadRequest("messages", f"each message needs a role ({', '.join(sorted(ROLES))}) and a string content")
    if messages[-1]["role"] != "user":
        raise BadRequest("messages", "the last message must be the user's")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop", "stop must be a string or a list of up to 4 non-empty strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed", "seed must be an integer")
    params = Params(
        max_tokens=int(_number(body, "max_tokens", body.get("max_completion_tokens") or 128, 1, max_tokens_limit)),
        temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 0.0001, 1),
        stop=tuple(stop),
        seed=seed,
    )
    return task, [{"role": m["role"], "content": m["content"]} for m in messages], params, bool(body.get("stream")), body


def call_record(
    messages: list[dict[str, str]], completion: Completion, latency_ms: float, extra: dict[str, Any], base: str
) -> dict[str, Any]:
    """The call the gateway logs for an answer, in the input contract: feedback on it later names its log_id."""
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    route = completion.route
    record: dict[str, Any] = {
        "log_id": uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).isoformat(),
        "task": route.task,
        "prompt": messages[-1]["content"],
        "messages": [m for m in messages[:-1] if m["role"] != "system"],
        "output": completion.text,
        "decision": "pending",
        # a segment's versions are numbered apart from its task's: "<task>.<segment>:<version>" keeps them apart
        "adapter_version": None
        if route.adapter is None
        else f"{route.key}:{route.version}"
        if route.segment
        else str(route.version),
        "model": base,
        "variant": _variant(route),
        "latency_ms": round(latency_ms, 2),
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "metadata": {"source": "gateway", **({"fallback": route.fallback} if route.fallback else {})},
    }
    if system is not None:
        record["system_prompt"] = system
    if route.experiment_id is not None:
        record["experiment_id"] = route.experiment_id
    if isinstance(extra.get("user"), str) and extra["user"]:
        record["user_id"] = extra["user"]
    return record


def _served(route: Route, log_id: str | None) -> dict[str, Any]:
    return {
        "log_id": log_id,
        "adapter": route.adapter,
        "adapter_version": route.version,
        "fallback": route.fallback,
        "variant": _variant(route),
    }


def _variant(route: Route) -> str:
    """The arm a call counts in: its rollout arm, even when that arm's adapter failed and the base answered (an error
    of the arm), else champion, or base when no adapter answered."""
    if route.experiment_id is not None:
        return route.variant
    return route.variant if route.adapter is not None else "base"


class Gateway:
    """The gateway's routes over a backend, logging through the capture app's spool writer."""

    def __init__(self, capture: Any, backend: InProcessBackend | UpstreamBackend, max_tokens_limit: int = 2048):
        self.capture = capture
        self.backend = backend
        self.max_tokens_limit = max_tokens_limit

    def log_call(self, record: dict[str, Any]) -> str | None:
        """Write the call durably; None when the contract refuses it (the answer is still given)."""
        settings = self.capture.settings
        try:
            log_id, line = encode_record(record, settings.partitions_start, settings.line_limits)
        except RecordRejected as exc:
            self.capture.metrics.records.labels("/v1/chat/completions", "rejected", exc.reason).inc()
            return None
        self.capture.writer.write_lines([line], sync=True)
        self.capture.metrics.records.labels("/v1/chat/completions", "accepted", "").inc()
        return log_id

    async def chat(self, request: Request) -> Response:
        try:
            body = json.loads(await self.capture.body(request))
        except ValueError:
            return _error(400, "invalid_json", "the body is not valid JSON", None)
        try:
            task, messages, params, stream, extra = parse_request(body, self.max_tokens_limit)
        except BadRequest as exc:
            return _error(400, "invalid_request_error", str(exc), exc.param)
        start, created = time.perf_counter(), int(time.time())
        unit = unit_of(extra.get("user"), messages)
        try:
            if stream:
                route, pieces, done = await run_in_threadpool(self.backend.stream, task, messages, params, unit)
                events = self._events(task, route, pieces, done, messages, extra, start, created)
                shadow = self._shadow_task(route, messages, params, unit, extra)
                return StreamingResponse(events, media_type="text/event-stream", background=shadow)
            completion = await run_in_threadpool(self.backend.complete, task, messages, params, unit)
        except LookupError as exc:
            return _error(404, "model_not_found", str(exc), "model")
        except UpstreamError as exc:
            return _error(502, "upstream_error", str(exc), None)
        record = call_record(messages, completion, (time.perf_counter() - start) * 1000, extra, self.backend.base_description)
        log_id = await run_in_threadpool(self.log_call, record)
        response = {
            "id": f"chatcmpl-{log_id or uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": created,
            "model": task,
            "system_fingerprint": _fingerprint(completion.route),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": _usage(completion),
            "ft_pipeline": _served(completion.route, log_id),
        }
        shadow = self._shadow_task(completion.route, messages, params, unit, extra)
        return JSONResponse(response, headers={LOG_HEADER: log_id or ""}, background=shadow)

    def _shadow_task(
        self, route: Route, messages: list[dict[str, str]], params: Params, unit: str, extra: dict[str, Any]
    ) -> BackgroundTask | None:
        """For a sampled share (FT_SERVE_SHADOW_RATE) of the champion arm's answers during a rollout: the candidate's
        answer to the same request, generated after the response is sent and logged as a shadow call."""
        rate = self.capture.settings.serve_shadow_rate
        if route.variant != CHAMPION or route.experiment_id is None or not rate or random.random() >= rate:
            return None

        def shadow() -> None:
            start = time.perf_counter()
            try:
                completion = self.backend.complete(route.task, messages, params, unit, CANDIDATE)
            except (LookupError, UpstreamError):
                return  # a shadow answer is best effort: the client already has its answer
            if completion.route.adapter is None or completion.route.variant != CANDIDATE:
                return  # the candidate did not load, or the rollout ended since the request was answered
            record = call_record(messages, completion, (time.perf_counter() - start) * 1000, extra, self.backend.base_description)
            record["variant"] = SHADOW
            record["metadata"]["shadow"] = True
            self.log_call(record)

        return BackgroundTask(shadow)  # a plain function: Starlette runs it in its thread pool

    def _events(
        self,
        task: str,
        route: Route,
        pieces: Iterator[str],
        done: Completion,
        messages: list[dict[str, str]],
        extra: dict[str, Any],
        start: float,
        created: int,
    ) -> Iterator[str]:
        """Server-sent events of a streamed answer; the call is logged when it ends, and its log_id rides on the last chunk."""
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"

        def event(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": task,
                "system_fingerprint": _fingerprint(route),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **more,
            }
            return f"data: {json.dumps(chunk)}\n\n"

        yield event({"role": "assistant", "content": ""})
        for piece in pieces:
            yield event({"content": piece})
        record = call_record(messages, done, (time.perf_counter() - start) * 1000, extra, self.backend.base_description)
        log_id = self.log_call(record)
        yield event({}, done.finish_reason, ft_pipeline=_served(route, log_id))
        if (extra.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": task,
                "choices": [],
                "usage": _usage(done),
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"

    async def load_adapter(self, request: Request) -> Response:
        """vLLM's runtime adapter loading: `{"lora_name": "<task>@<version>", "lora_path": "<folder>"}`."""
        if not isinstance(self.backend, InProcessBackend):
            return _error(501, "not_supported", "this gateway forwards to an upstream server; load adapters there", None)
        try:
            body = json.loads(await self.capture.body(request))
            await run_in_threadpool(self.backend.load_adapter, str(body["lora_name"]), str(body["lora_path"]))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return _error(400, "invalid_request_error", " ".join(str(exc).split())[:300], "lora_name")
        return JSONResponse({"status": "loaded", "lora_name": body["lora_name"]})

    async def unload_adapter(self, request: Request) -> Response:
        """vLLM's runtime adapter unloading: `{"lora_name": ...}`."""
        if not isinstance(self.backend, InProcessBackend):
            return _error(501, "not_supported", "this gateway forwards to an upstream server; unload adapters there", None)
        try:
            body = json.loads(await self.capture.body(request))
            await run_in_threadpool(self.backend.unload_adapter, str(body["lora_name"]))
        except LookupError as exc:
            return _error(404, "model_not_found", str(exc), "lora_name")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "invalid_request_error", str(exc), "lora_name")
        return JSONResponse({"status": "unloaded", "lora_name": body["lora_name"]})

    async def models(self, request: Request) -> Response:
        settings = self.capture.settings
        tasks = (
            sorted(p.name for p in settings.adapters_dir.iterdir() if p.is_dir() and TASK_NAME.fullmatch(p.name))
            if settings.adapters_dir.is_dir()
            else []
        )
        champions = await run_in_threadpool(lambda: {task: self.backend.champion(task) for task in tasks})
        data = [
            {
                "id": task,
                "object": "model",
                "created": 0,
                "owned_by": "ft_pipeline",
                "champion_version": champions[task],
                "base": self.backend.base_description,
            }
            for task in tasks
        ]
        return JSONResponse({"object": "list", "data": data})


def _fingerprint(route: Route) -> str:
    return f"{route.key}:v{route.version}" if route.adapter is not None else "base"


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def _error(status: int, kind: str, message: str, param: str | None) -> JSONResponse:
    """An error in the OpenAI shape, which its client raises as the matching exception."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)

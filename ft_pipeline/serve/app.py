"""The HTTP app: the capture API (`POST /v1/logs`, `/v1/feedback`) and the gateway, with API keys, limits, metrics and an access log."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ft_pipeline.client import CALL, FEEDBACK, LogWriter, RecordKind, RecordRejected, encode_record
from ft_pipeline.serve.backends import InProcessBackend, UpstreamBackend
from ft_pipeline.serve.keys import ApiKey, KeyStore
from ft_pipeline.settings import Settings


class HttpError(Exception):
    """A request refused as a whole, with its status, a reason code and a detail for the caller."""

    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def is_loopback(host: str) -> bool:
    """Whether a bind address only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Metrics:
    """The Prometheus series of one server process."""

    registry: CollectorRegistry
    records: Counter
    latency: Histogram
    backlog: Gauge

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter(
                "ft_records",
                "Records accepted and rejected, by route and reason.",
                ["route", "status", "reason"],
                registry=registry,
            ),
            Histogram(
                "ft_request_duration_seconds", "Request latency by route and status.", ["route", "status"], registry=registry
            ),
            Gauge(
                "ft_spool_backlog_records", "Accepted records spooled and not yet published into the inbox.", registry=registry
            ),
        )


class CaptureApp:
    """The state behind the routes: settings, the key store, the spool writer, metrics and the access log."""

    def __init__(self, settings: Settings, require_keys: bool):
        self.settings = settings
        self.require_keys = require_keys
        self.keys = KeyStore(settings.root)
        self.writer = LogWriter(
            settings.inbox_dir, flush_every=settings.serve_publish_every, flush_seconds=settings.serve_publish_seconds
        )
        self.metrics = Metrics.create()
        self.access_log = settings.root / "logs" / "access.jsonl"
        self.access_log.parent.mkdir(parents=True, exist_ok=True)

    def authorize(self, request: Request, scope: str) -> ApiKey | None:
        """The key of a request allowed `scope`; None on loopback without a token or without any key; HttpError otherwise."""
        header = request.headers.get("authorization", "")
        # on loopback with no key created, auth is off: OpenAI clients always send some key, which then means nothing
        if not self.require_keys and (not header or not self.keys.has_active()):
            return None
        if not header:
            raise HttpError(401, "missing_token", "send an API key as 'Authorization: Bearer <token>'")
        kind, _, token = header.partition(" ")
        key = self.keys.authenticate(token.strip()) if kind.lower() == "bearer" else None
        if key is None:
            raise HttpError(401, "invalid_token", "the API key is unknown or revoked")
        if scope not in key.scopes:
            raise HttpError(403, "missing_scope", f"the API key lacks the {scope!r} scope")
        return key

    async def body(self, request: Request) -> bytes:
        """The request body, refused past the size limit or when the client sends it too slowly."""
        limit = self.settings.serve_max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, "body_too_large", f"the body has {declared} bytes, more than the limit of {limit}")

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.settings.serve_body_timeout_seconds)
        except TimeoutError:
            raise HttpError(408, "body_timeout", "the body did not arrive in time") from None

    def records(self, body: bytes) -> list[Any]:
        """The records of a body: one JSON object, or `{"records": [...]}`, within the batch limit."""
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise HttpError(400, "invalid_json", "the body is not valid UTF-8 JSON") from None
        if isinstance(payload, dict) and set(payload) == {"records"}:
            payload = payload["records"]
            if not isinstance(payload, list):
                raise HttpError(400, "invalid_batch", '"records" must be a list of records')
        else:
            payload = [payload]
        if len(payload) > self.settings.serve_max_batch:
            raise HttpError(
                413, "batch_too_large", f"{len(payload)} records, more than the limit of {self.settings.serve_max_batch}"
            )
        return payload

    def judge(self, record: Any, kind: RecordKind) -> tuple[dict[str, Any], bytes | None]:
        """The result of one record of `kind` and its inbox line when accepted."""
        longest = self.settings.serve_max_field_chars
        if isinstance(record, dict):
            long = [name for name, value in record.items() if isinstance(value, str) and len(value) > longest]
            if long:
                return {
                    "status": "rejected",
                    "reason": "field_too_long",
                    "detail": f"{', '.join(sorted(long))} over {longest} characters",
                }, None
        else:
            return {"status": "rejected", "reason": "not_an_object", "detail": "a record must be a JSON object"}, None
        try:
            log_id, line = encode_record(record, self.settings.partitions_start, self.settings.line_limits, kind)
        except RecordRejected as exc:
            return {"status": "rejected", "reason": exc.reason, "detail": exc.detail}, None
        return {"status": "accepted", "log_id": log_id}, line

    async def capture(self, request: Request, kind: RecordKind) -> dict[str, Any]:
        """Validate every record as one of `kind`; write the accepted ones durably in one piece; the results in order."""
        judged = [self.judge(record, kind) for record in self.records(await self.body(request))]
        lines = [line for _, line in judged if line is not None]
        if lines:
            # fsynced before the answer: an accepted record survives a crash of the server right after it
            await run_in_threadpool(self.writer.write_lines, lines, True)
        for result, _ in judged:
            self.metrics.records.labels(request.url.path, result["status"], result.get("reason", "")).inc()
        self.metrics.backlog.set(self.writer.pending)
        return {"results": [result for result, _ in judged]}

    def log_access(self, key: ApiKey | None, route: str, count: int, status: int, seconds: float) -> None:
        """One line per request: who, where, how many records, the status; never the payload."""
        entry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "key_id": key.id if key else None,
            "route": route,
            "records": count,
            "status": status,
            "ms": round(seconds * 1000, 2),
        }
        fd = os.open(self.access_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)


def make_backend(settings: Settings) -> InProcessBackend | UpstreamBackend:
    """The gateway's backend that FT_SERVE_BACKEND names."""
    if settings.serve_backend == "upstream":
        if not settings.upstream_url:
            raise ValueError("FT_SERVE_BACKEND=upstream needs FT_UPSTREAM_URL")
        return UpstreamBackend(settings, settings.upstream_url, settings.upstream_api_key, settings.upstream_base_model)
    if settings.serve_backend != "inprocess":
        raise ValueError(f"FT_SERVE_BACKEND must be inprocess or upstream, not {settings.serve_backend!r}")
    return InProcessBackend(settings)


def create_app(
    settings: Settings, require_keys: bool = False, backend: InProcessBackend | UpstreamBackend | None = None
) -> Starlette:
    """The ASGI app; `require_keys` makes every route but /healthz need a bearer API key with the route's scope."""
    from ft_pipeline.serve.gateway import Gateway

    state = CaptureApp(settings, require_keys)
    gateway = Gateway(state, backend or make_backend(settings))

    def guarded(
        scope: str, handler: Callable[[Request], Awaitable[tuple[Response, int]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A route that checks the key's scope, times the request and writes its access log line."""

        async def endpoint(request: Request) -> Response:
            start, key, count = time.perf_counter(), None, 0
            try:
                key = state.authorize(request, scope)
                response, count = await handler(request)
            except HttpError as exc:
                response = JSONResponse({"error": {"reason": exc.reason, "detail": exc.detail}}, exc.status)
            seconds = time.perf_counter() - start
            state.metrics.latency.labels(request.url.path, str(response.status_code)).observe(seconds)
            state.log_access(key, request.url.path, count, response.status_code, seconds)
            return response

        return endpoint

    def capture(kind: RecordKind) -> Callable[[Request], Awaitable[tuple[Response, int]]]:
        """The handler of the capture route of one record kind."""

        async def records(request: Request) -> tuple[Response, int]:
            result = await state.capture(request, kind)
            return JSONResponse(result), len(result["results"])

        return records

    async def chat(request: Request) -> tuple[Response, int]:
        return await gateway.chat(request), 1

    async def models(request: Request) -> tuple[Response, int]:
        return await gateway.models(request), 0

    async def load_adapter(request: Request) -> tuple[Response, int]:
        return await gateway.load_adapter(request), 1

    async def unload_adapter(request: Request) -> tuple[Response, int]:
        return await gateway.unload_adapter(request), 1

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> tuple[Response, int]:
        state.metrics.backlog.set(state.writer.pending)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST), 0

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def publisher() -> None:
            # an idle spool still reaches the inbox within serve_publish_seconds
            while True:
                await asyncio.sleep(1.0)
                await run_in_threadpool(state.writer.publish_if_due)

        task = asyncio.create_task(publisher())
        try:
            yield
        finally:
            task.cancel()
            state.writer.close()

    app = Starlette(
        routes=[
            Route(CALL.route, guarded("log", capture(CALL)), methods=["POST"]),
            Route(FEEDBACK.route, guarded("feedback", capture(FEEDBACK)), methods=["POST"]),
            Route("/v1/chat/completions", guarded("generate", chat), methods=["POST"]),
            Route("/v1/models", guarded("generate", models), methods=["GET"]),
            Route("/v1/load_lora_adapter", guarded("generate", load_adapter), methods=["POST"]),
            Route("/v1/unload_lora_adapter", guarded("generate", unload_adapter), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", guarded("read", metrics), methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.capture = state
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn; beyond loopback only with an active API key to check requests against."""
    import uvicorn

    require_keys = not is_loopback(host)
    if require_keys and not KeyStore(settings.root).has_active():
        raise ValueError(f"binding to {host} needs API keys: create one with `ft-pipeline keys create NAME --scope log` first")
    uvicorn.run(create_app(settings, require_keys), host=host, port=port, access_log=False, log_level="info")

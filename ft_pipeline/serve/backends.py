"""Model backends of the gateway: the in-process one holds the base model once and switches task adapters per request."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ft_pipeline.core.lineage import adapter_dir, read_adapter_config
from ft_pipeline.core.segments import model_key, segment_key
from ft_pipeline.settings import Settings

if TYPE_CHECKING:
    from ft_pipeline.serve.rollout import Rollout


@dataclass(frozen=True)
class Params:
    """What an OpenAI-style request asks of a generation."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Route:
    """Who answers a request: an adapter (a task's champion, or one loaded at runtime by name), or the base model and why."""

    task: str
    version: int | None
    adapter: str | None = None
    fallback: str | None = None
    variant: str = "champion"  # the rollout arm that answered
    experiment_id: str | None = None  # the rollout's, when one is active
    segment: str | None = None  # the segment whose own champion answers, when it has one

    @property
    def key(self) -> str:
        """The model key the version belongs to: the task's, or its segment's."""
        return model_key(self.task, self.segment)


# the variant of calls a segment's own champion answered: outside every rollout arm of its task
SEGMENT_VARIANT = "segment"
# what a request's model may name: a task (its champion answers) or a runtime-loaded adapter, `<task>@<version>`
MODEL_NAME = re.compile(r"(?P<task>[a-z0-9][a-z0-9_-]{0,63})(@(?P<version>[0-9]{1,9}))?")


class UpstreamError(RuntimeError):
    """The upstream server could not answer."""


def _module_name(name: str) -> str:
    """The name peft keeps an adapter under: torch module names cannot hold the `.` of a segment's model key."""
    return name.replace(".", "+")


def adapter_name(task: str, version: int) -> str:
    """The name a task's adapter version is loaded under, here and upstream."""
    return f"{task}@{version}"


@dataclass
class Completion:
    """A finished answer with its token counts and why it ended ('stop' or 'length')."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    route: Route = field(default_factory=lambda: Route("", None))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop sequence (excluded, as OpenAI does), and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class Champions:
    """Each task's champion version from the registry and its active rollout, cached for `ttl` seconds (a promotion or a
    rollout step reaches requests within it)."""

    def __init__(self, settings: Settings, ttl: float = 5.0):
        self.settings = settings
        self.champion_ttl = ttl
        self._champions: dict[str, tuple[float, int | None]] = {}
        self._rollouts: dict[str, tuple[float, Rollout | None]] = {}

    @property
    def base_description(self) -> str:
        return self.settings.base_model

    def champion(self, task: str) -> int | None:
        """The task's champion version, cached for champion_ttl seconds (a promotion reaches requests within it)."""
        from ft_pipeline.training.champion import current_champion

        now = time.monotonic()
        cached = self._champions.get(task)
        if cached is None or now - cached[0] > self.champion_ttl:
            cached = (now, current_champion(self.settings, task))
            self._champions[task] = cached
        return cached[1]

    def rollout(self, task: str) -> Rollout | None:
        """The task's active rollout, cached like the champion."""
        from ft_pipeline.serve.rollout import read_rollout

        now = time.monotonic()
        cached = self._rollouts.get(task)
        if cached is None or now - cached[0] > self.champion_ttl:
            state = read_rollout(self.settings, task)
            cached = (now, state if state is not None and state.active else None)
            self._rollouts[task] = cached
        return cached[1]

    def segment_of(self, task: str, unit: str | None) -> str | None:
        """The segment of a request's user (FT_SEGMENT_BY=user_id) when that segment has an adapter of its own."""
        from ft_pipeline.serve.rollout import USER_UNIT

        if self.settings.segment_by != "user_id" or not unit or not unit.startswith(USER_UNIT):
            return None
        segment = segment_key(unit.removeprefix(USER_UNIT))
        # a folder test first: most users have no model of their own, and the registry is not asked for each
        if segment is None or not (self.settings.adapters_dir / model_key(task, segment)).is_dir():
            return None
        return segment

    def pick(self, task: str, unit: str | None, forced: str | None = None) -> Route:
        """Which version serves a request: its user's segment champion, else the task's champion, or during a rollout
        the arm of the request's unit (`forced` names an arm instead); the route has no adapter yet."""
        from ft_pipeline.serve.rollout import CANDIDATE, arm

        segment = self.segment_of(task, unit) if forced is None else None
        if segment is not None and (own := self.champion(model_key(task, segment))) is not None:
            return Route(task, own, variant=SEGMENT_VARIANT, segment=segment)
        champion, state = self.champion(task), self.rollout(task)
        if state is None:
            return Route(task, champion)
        chosen = forced or arm(task, state.candidate, unit or "", state.percent)
        version = state.candidate if chosen == CANDIDATE else champion
        return Route(task, version, variant=chosen, experiment_id=state.experiment_id)


class InProcessBackend(Champions):
    """transformers + peft in this process: one base model, adapters loaded by name into an LRU of `max_adapters`."""

    def __init__(self, settings: Settings, max_adapters: int = 4, champion_ttl: float = 5.0):
        super().__init__(settings, champion_ttl)
        self.max_adapters = max_adapters
        self._lock = threading.Lock()  # one generation at a time on the shared weights
        self._model: Any = None
        self._tokenizer: Any = None
        self._identity: dict[str, Any] = {}
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> folder, least recently used first
        self._runtime: dict[str, str] = {}  # adapters loaded by name through load_adapter, reloaded after eviction

    def load_adapter(self, name: str, path: str) -> None:
        """Load an adapter folder under `name` (the runtime adapter-loading endpoint); ValueError when it cannot be."""
        from ft_pipeline.core.lineage import ADAPTER_CONFIG
        from ft_pipeline.training.base_model import check_adapter_base

        if not MODEL_NAME.fullmatch(name) or "@" not in name:
            raise ValueError(f"lora_name {name!r} must be <task>@<version>")
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise ValueError(f"lora_path {path!r} holds no peft adapter (adapter_config.json)")
        with self._lock:
            self._ensure_base()
            if (folder / ADAPTER_CONFIG).is_file():
                config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
                check_adapter_base(config, self._identity, f"adapter {name}")
            self._runtime[name] = str(folder)
            self._use(name, str(folder))

    def unload_adapter(self, name: str) -> None:
        """Forget a runtime-loaded adapter; LookupError when none has that name."""
        with self._lock:
            if self._runtime.pop(name, None) is None:
                raise LookupError(f"no adapter named {name!r} is loaded")
            if name in self._loaded:
                del self._loaded[name]
                self._model.delete_adapter(_module_name(name))

    def _ensure_base(self) -> None:
        if self._model is not None:
            return
        from ft_pipeline.training.base_model import base_identity, ensure_base_model, load_base_model
        from ft_pipeline.training.lora import resolve_device

        source = ensure_base_model(self.settings, log=lambda _: None)
        self._device = resolve_device(self.settings.device)
        self._model, self._tokenizer = load_base_model(self.settings, device=self._device, source=source)
        self._model.eval()
        self._identity = base_identity(self.settings, source)

    def _activate(self, model: str, unit: str | None, forced: str | None) -> Route:
        """Make the adapter a request names active (loading it if needed), or say why the base answers."""
        from ft_pipeline.training.base_model import BaseModelMismatch, check_adapter_base

        match = MODEL_NAME.fullmatch(model)
        if match is None:
            raise ValueError(f"model {model!r} must be a task name or <task>@<version>")
        task = match["task"]
        if match["version"] is not None:
            if model not in self._runtime:
                raise LookupError(f"no adapter named {model!r} is loaded")
            self._use(model, self._runtime[model])
            return Route(task, int(match["version"]), model)
        route = self.pick(task, unit, forced)
        version = route.version
        if version is None:
            return Route(task, None, None, "the task has no champion")
        name = adapter_name(route.key, version)
        if name not in self._loaded:
            try:
                config = read_adapter_config(self.settings.adapters_dir, route.key, version)
                check_adapter_base(config, self._identity, f"{route.variant} {route.key} v{version}")
                self._use(name, str(adapter_dir(self.settings.adapters_dir, route.key, version)))
            except (BaseModelMismatch, OSError, ValueError, KeyError) as exc:
                why = f"{route.variant} v{version} could not be loaded: {' '.join(str(exc).split())[:300]}"
                return Route(task, None, None, why, route.variant, route.experiment_id)
        self._use(name, self._loaded[name])
        return dataclasses.replace(route, adapter=name)

    def _use(self, name: str, path: str) -> None:
        """Load the adapter if it is not, make it the active one, and evict the least recently used beyond max_adapters."""
        if name not in self._loaded:
            self._load(name, path)
            self._loaded[name] = path
        self._loaded.move_to_end(name)
        self._model.set_adapter(_module_name(name))
        while len(self._loaded) > self.max_adapters:
            old, _ = self._loaded.popitem(last=False)
            self._model.delete_adapter(_module_name(old))

    def _load(self, name: str, path: str) -> None:
        from peft import PeftModel

        if isinstance(self._model, PeftModel):
            self._model.load_adapter(path, adapter_name=_module_name(name))
        else:  # the first adapter wraps the base; later ones load beside it
            self._model = PeftModel.from_pretrained(self._model, path, adapter_name=_module_name(name))
            self._model.eval()

    def _inputs(self, messages: list[dict[str, str]]) -> Any:
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the template already writes the special tokens, so the tokenizer must not add a second BOS
        return self._tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self._device)

    def _generate_kwargs(self, params: Params) -> dict[str, Any]:
        import torch

        tokenizer = self._tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens, "pad_token_id": pad_id}
        if params.temperature > 0:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
        return kwargs

    def _generate(self, route: Route, inputs: Any, kwargs: dict[str, Any]) -> Any:
        import contextlib

        import torch

        # the base answers with the adapters switched off, not with another task's adapter left active
        off = self._model.disable_adapter() if route.adapter is None and self._loaded else contextlib.nullcontext()
        with torch.inference_mode(), off:
            return self._model.generate(**inputs, **kwargs)

    def complete(
        self, model: str, messages: list[dict[str, str]], params: Params, unit: str | None = None, forced: str | None = None
    ) -> Completion:
        """The whole answer of the task's serving model (for a rollout, the arm of `unit`, or the `forced` one)."""
        with self._lock:
            self._ensure_base()
            route = self._activate(model, unit, forced)
            inputs = self._inputs(messages)
            output = self._generate(route, inputs, self._generate_kwargs(params))
        new = output[0, inputs["input_ids"].shape[1] :]
        text, stopped = cut_at_stop(self._tokenizer.decode(new, skip_special_tokens=True), params.stop)
        ended = stopped or (len(new) < params.max_tokens)
        return Completion(text, int(inputs["input_ids"].shape[1]), len(new), "stop" if ended else "length", route)

    def stream(
        self, model: str, messages: list[dict[str, str]], params: Params, unit: str | None = None
    ) -> tuple[Route, Iterator[str], Completion]:
        """The route, an iterator of text pieces as they are generated, and the Completion filled once it is exhausted."""
        from transformers import TextIteratorStreamer

        self._lock.acquire()
        try:
            self._ensure_base()
            route = self._activate(model, unit, None)
            inputs = self._inputs(messages)
            streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
            kwargs = {**self._generate_kwargs(params), "streamer": streamer}
            done = Completion("", int(inputs["input_ids"].shape[1]), 0, "length", route)
            holder: dict[str, Any] = {}

            def run() -> None:
                try:
                    holder["output"] = self._generate(route, inputs, kwargs)
                except BaseException as exc:
                    holder["error"] = exc
                    streamer.end()  # or the reader waits for pieces that never come
                finally:
                    self._lock.release()

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
        except BaseException:
            self._lock.release()
            raise
        longest_stop = max((len(s) for s in params.stop), default=0)

        def pieces() -> Iterator[str]:
            text, sent = "", 0
            for piece in streamer:
                text += piece
                cut, stopped = cut_at_stop(text, params.stop)
                # hold back what could still be the start of a stop sequence
                ready = len(cut) if stopped else max(len(text) - max(longest_stop - 1, 0), sent)
                if ready > sent:
                    yield cut[sent:ready]
                    sent = ready
                if stopped:
                    # generation goes on to its own stop string check; drain it so the lock is released
                    for rest in streamer:
                        text += rest
                    break
            worker.join()
            if "error" in holder:
                raise holder["error"]
            cut, stopped = cut_at_stop(text, params.stop)
            if len(cut) > sent:
                yield cut[sent:]
            output = holder.get("output")
            produced = int(output.shape[1] - inputs["input_ids"].shape[1]) if output is not None else 0
            done.text, done.completion_tokens = cut, produced
            done.finish_reason = "stop" if stopped or produced < params.max_tokens else "length"

        return route, pieces(), done


class UpstreamBackend(Champions):
    """Forwards to an OpenAI-compatible server that serves LoRA adapters by name (vLLM with --enable-lora, or another
    `ft-pipeline serve`), loading each new champion through its runtime endpoint `/v1/load_lora_adapter`.

    The upstream reads the adapter folder by its path, so both see the adapters under the same path (a shared volume).
    """

    def __init__(self, settings: Settings, url: str, api_key: str = "", base_model: str = "", timeout: float = 300.0):
        import httpx

        super().__init__(settings)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.base_model = base_model or settings.base_model
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    @property
    def base_description(self) -> str:
        return self.base_model

    def _route(self, model: str, unit: str | None, forced: str | None) -> Route:
        import httpx

        match = MODEL_NAME.fullmatch(model)
        if match is None:
            raise ValueError(f"model {model!r} must be a task name or <task>@<version>")
        task = match["task"]
        if match["version"] is not None:  # a name the upstream itself serves
            return Route(task, int(match["version"]), model)
        route = self.pick(task, unit, forced)
        version = route.version
        if version is None:
            return Route(task, None, None, "the task has no champion")
        name = adapter_name(route.key, version)
        with self._lock:
            if name not in self._loaded:
                folder = adapter_dir(self.settings.adapters_dir, route.key, version)
                try:
                    answer = self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)})
                except httpx.HTTPError as exc:
                    raise UpstreamError(f"the upstream server is unreachable: {exc}") from None
                # vLLM answers 400 for a name it already serves
                if answer.status_code >= 400 and "already" not in answer.text:
                    why = f"{route.variant} v{version} could not be loaded upstream: {answer.text[:300]}"
                    return Route(task, None, None, why, route.variant, route.experiment_id)
                self._loaded.add(name)
        return dataclasses.replace(route, adapter=name)

    def _body(self, route: Route, messages: list[dict[str, str]], params: Params, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": route.adapter or self.base_model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def complete(
        self, model: str, messages: list[dict[str, str]], params: Params, unit: str | None = None, forced: str | None = None
    ) -> Completion:
        """The upstream's whole answer (for a rollout, the arm of `unit`, or the `forced` one)."""
        import httpx

        route = self._route(model, unit, forced)
        try:
            answer = self.http.post("/v1/chat/completions", json=self._body(route, messages, params, False))
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the upstream server failed: {exc}") from None
        data = answer.json()
        choice, usage = data["choices"][0], data.get("usage") or {}
        return Completion(
            choice["message"]["content"] or "",
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            choice.get("finish_reason") or "stop",
            route,
        )

    def stream(
        self, model: str, messages: list[dict[str, str]], params: Params, unit: str | None = None
    ) -> tuple[Route, Iterator[str], Completion]:
        """The upstream's answer as it streams, relayed piece by piece."""
        import httpx

        route = self._route(model, unit, None)
        done = Completion("", 0, 0, "stop", route)

        def pieces() -> Iterator[str]:
            text = []
            try:
                with self.http.stream("POST", "/v1/chat/completions", json=self._body(route, messages, params, True)) as answer:
                    answer.raise_for_status()
                    for line in answer.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line.removeprefix("data: "))
                        if chunk.get("usage"):
                            done.prompt_tokens = int(chunk["usage"].get("prompt_tokens", 0))
                            done.completion_tokens = int(chunk["usage"].get("completion_tokens", 0))
                        for choice in chunk.get("choices") or []:
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                text.append(piece)
                                yield piece
                            if choice.get("finish_reason"):
                                done.finish_reason = choice["finish_reason"]
            except httpx.HTTPError as exc:
                raise UpstreamError(f"the upstream server failed: {exc}") from None
            done.text = "".join(text)

        return route, pieces(), done

"""Model backends of the gateway: the in-process one holds the base model once and switches task adapters per request."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ft_pipeline.core.io import checked_name
from ft_pipeline.core.lineage import adapter_dir, read_adapter_config
from ft_pipeline.settings import Settings


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
    """Who answers a task: its champion adapter, or the base model with the reason."""

    task: str
    version: int | None
    fallback: str | None = None


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


class InProcessBackend:
    """transformers + peft in this process: one base model, champions loaded by name into an LRU of `max_adapters`."""

    def __init__(self, settings: Settings, max_adapters: int = 4, champion_ttl: float = 5.0):
        self.settings = settings
        self.max_adapters = max_adapters
        self.champion_ttl = champion_ttl
        self._lock = threading.Lock()  # one generation at a time on the shared weights
        self._model: Any = None
        self._tokenizer: Any = None
        self._identity: dict[str, Any] = {}
        self._loaded: OrderedDict[str, int] = OrderedDict()  # adapter name -> version, least recently used first
        self._champions: dict[str, tuple[float, int | None]] = {}

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

    def _activate(self, task: str) -> Route:
        """Make the task's champion the active adapter (loading it if needed), or say why the base answers."""
        from ft_pipeline.training.base_model import BaseModelMismatch, check_adapter_base

        version = self.champion(task)
        if version is None:
            return Route(task, None, "the task has no champion")
        name = f"{task}@{version}"
        if name not in self._loaded:
            try:
                config = read_adapter_config(self.settings.adapters_dir, task, version)
                check_adapter_base(config, self._identity, f"champion {task} v{version}")
                self._load(name, str(adapter_dir(self.settings.adapters_dir, task, version)))
            except (BaseModelMismatch, OSError, ValueError, KeyError) as exc:
                return Route(task, None, f"champion v{version} could not be loaded: {' '.join(str(exc).split())[:300]}")
            self._loaded[name] = version
        self._loaded.move_to_end(name)
        self._model.set_adapter(name)
        while len(self._loaded) > self.max_adapters:
            old, _ = self._loaded.popitem(last=False)
            self._model.delete_adapter(old)
        return Route(task, version)

    def _load(self, name: str, path: str) -> None:
        from peft import PeftModel

        if isinstance(self._model, PeftModel):
            self._model.load_adapter(path, adapter_name=name)
        else:  # the first adapter wraps the base; later ones load beside it
            self._model = PeftModel.from_pretrained(self._model, path, adapter_name=name)
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
        off = self._model.disable_adapter() if route.version is None and self._loaded else contextlib.nullcontext()
        with torch.inference_mode(), off:
            return self._model.generate(**inputs, **kwargs)

    def complete(self, task: str, messages: list[dict[str, str]], params: Params) -> Completion:
        """The whole answer of the task's serving model."""
        task = checked_name(task, "model")
        with self._lock:
            self._ensure_base()
            route = self._activate(task)
            inputs = self._inputs(messages)
            output = self._generate(route, inputs, self._generate_kwargs(params))
        new = output[0, inputs["input_ids"].shape[1] :]
        text, stopped = cut_at_stop(self._tokenizer.decode(new, skip_special_tokens=True), params.stop)
        ended = stopped or (len(new) < params.max_tokens)
        return Completion(text, int(inputs["input_ids"].shape[1]), len(new), "stop" if ended else "length", route)

    def stream(self, task: str, messages: list[dict[str, str]], params: Params) -> tuple[Route, Iterator[str], Completion]:
        """The route, an iterator of text pieces as they are generated, and the Completion filled once it is exhausted."""
        from transformers import TextIteratorStreamer

        task = checked_name(task, "model")
        self._lock.acquire()
        try:
            self._ensure_base()
            route = self._activate(task)
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

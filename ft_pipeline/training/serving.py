"""Answering prompts with a segment's or a task's champion adapter (the base model when neither has one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ft_pipeline.core.lineage import adapter_dir, read_adapter_config
from ft_pipeline.core.segments import checked_model_key, model_key, segment_key
from ft_pipeline.settings import Settings


def complete(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int, device: Any) -> str:
    """The greedy assistant reply of `model` to a chat, rendered with the tokenizer's chat template."""
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # the template already writes the special tokens, so the tokenizer must not add a second BOS
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@dataclass(frozen=True)
class Answer:
    """A reply and the model that gave it: a segment's or the task's champion (`key` and `version`), or the base."""

    text: str
    key: str
    version: int | None

    @property
    def served_by(self) -> str:
        return f"{self.key} v{self.version}" if self.version is not None else "the base model"


def serving_model(settings: Settings, task: str, segment: str | None = None) -> tuple[str, int | None]:
    """Who answers a task's request (of a segment's user, agent or topic when `segment` is given): the segment's
    champion, else the task's champion, else the base model (version None)."""
    from ft_pipeline.training.champion import current_champion

    task = checked_model_key(task)
    key = segment_key(segment) if segment else None
    candidates = ([model_key(task, key)] if key else []) + [task]
    for candidate in candidates:
        version = current_champion(settings, candidate)
        if version is not None:
            return candidate, version
    return task, None


def generate(settings: Settings, task: str, prompt: str, max_new_tokens: int = 128, segment: str | None = None) -> str:
    """The reply of the task's champion adapter (a segment's own, when it has one) to `prompt`."""
    return answer(settings, task, prompt, max_new_tokens, segment).text


def answer(settings: Settings, task: str, prompt: str, max_new_tokens: int = 128, segment: str | None = None) -> Answer:
    """The reply to `prompt` of the model serving the task (and segment), with the task's default system prompt if it
    has one, and which model gave it."""
    from ft_pipeline.training.base_model import (
        BaseModelMismatch,
        base_identity,
        check_adapter_base,
        describe_identity,
        existing_base_model,
        load_base_model,
    )
    from ft_pipeline.training.lora import resolve_device

    device = resolve_device(settings.device)
    key, champion = serving_model(settings, task, segment)
    source = None
    if champion is not None:
        config = read_adapter_config(settings.adapters_dir, key, champion)
        # Checked before anything is built or loaded: a builtin of other knobs is not built just to be refused.
        source = existing_base_model(settings)
        if source is None:
            raise BaseModelMismatch(
                f"champion {key} v{champion} was trained on base {describe_identity(config.get('base_identity'))}; "
                "the builtin base of the current FT_BUILTIN_* knobs is not built, so it cannot be that one: "
                "set the knobs (or FT_BASE_MODEL) it was trained with"
            )
        check_adapter_base(config, base_identity(settings, source), f"champion {key} v{champion}")
    model, tokenizer = load_base_model(settings, device=device, source=source)
    if champion is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir(settings.adapters_dir, key, champion)))
    model.eval()
    system = settings.default_system_prompts.get(task)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Answer(complete(model, tokenizer, messages, max_new_tokens, device), key, champion)

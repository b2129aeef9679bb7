"""Exports of a task's adapter version for other engines: a merged full model, an Ollama Modelfile, a vLLM LoRA module."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_pipeline.core.io import replace_dir_atomic, write_json_atomic
from ft_pipeline.core.lineage import adapter_dir, read_adapter_config
from ft_pipeline.core.segments import checked_model_key, task_of
from ft_pipeline.settings import Settings

FORMATS = ("merged", "ollama", "vllm")
MANIFEST = "export.json"
# Stands for a message's text while a chat template is rendered, so what the template writes around it shows.
CONTENT = "\x00content\x00"
ROLES = ("system", "user", "assistant")
# A chat of every role, several turns: the derived per-role format must render it exactly as the template does.
PROBE = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Hi there."},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "And again?"},
]


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as a loop over the messages: what comes before the first, around each role's content, and the
    generation prompt after a chat that does not end with the assistant."""

    preamble: str
    around: dict[str, tuple[str, str]]
    generation: str

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The chat rendered by this format (what the Go template of the Modelfile renders)."""
        text = self.preamble + "".join(self.around[m["role"]][0] + m["content"] + self.around[m["role"]][1] for m in messages)
        return text + (self.generation if add_generation_prompt and messages[-1]["role"] != "assistant" else "")

    def go_template(self) -> str:
        """The format in Ollama's Go template syntax over `.Messages` (no trim markers: the whitespace is the format's)."""
        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{_go(before)}{{{{ .Content }}}}{_go(after)}'
            for i, (role, (before, after)) in enumerate(self.around.items())
        )
        return (
            f'{_go(self.preamble)}{{{{ $last := "" }}}}{{{{ range .Messages }}}}{branches}{{{{ end }}}}'
            f'{{{{ $last = .Role }}}}{{{{ end }}}}{{{{ if ne $last "assistant" }}}}{_go(self.generation)}{{{{ end }}}}'
        )


def _go(text: str) -> str:
    """Literal text inside a Go template: only `{{` would start an action."""
    return text.replace("{{", '{{ "{{" }}')


def chat_format(tokenizer: Any) -> ChatFormat:
    """The tokenizer's chat template as a per-role loop; ValueError when it is not one (it then needs a hand-written TEMPLATE)."""

    def render(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))

    try:
        preamble = render([])  # what a template writes before any turn, such as a BOS token
    except Exception:  # templates that index messages[0] fail on an empty chat; the probe below tells
        preamble = ""
    around = {}
    for role in ROLES:
        text = render([{"role": role, "content": CONTENT}])
        if not text.startswith(preamble) or text.count(CONTENT) != 1:
            raise ValueError(f"the chat template does not render a lone {role} message as text around its content")
        before, after = text[len(preamble) :].split(CONTENT)
        around[role] = (before, after)
    closed = render([{"role": "user", "content": CONTENT}])
    generation = render([{"role": "user", "content": CONTENT}], add_generation_prompt=True)[len(closed) :]
    found = ChatFormat(preamble, around, generation)
    for add in (False, True):
        if found.render(PROBE, add) != render(PROBE, add):
            raise ValueError(
                "the chat template is not a plain loop over the messages (it treats some turns differently), "
                "so it has no per-role Go template; write the Modelfile's TEMPLATE by hand"
            )
    return found


def export_adapter(
    settings: Settings, task: str, fmt: str, out: Path, version: int | None = None, force: bool = False
) -> dict[str, Any]:
    """Write one adapter version (default: the champion, else the newest) of `task` into `out` in the format `fmt`;
    returns the export's manifest. `out` must not exist or be empty, unless `force` replaces it."""
    from ft_pipeline.training.status import chosen_version

    task = checked_model_key(task)
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} must be one of {', '.join(FORMATS)}")
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty; pass --force to replace what it holds")
    version = chosen_version(settings, task, version)
    adapter = adapter_dir(settings.adapters_dir, task, version)
    base = pinned_base(settings, task, version)
    for kept in (settings.root.resolve(), adapter.resolve(), Path(base).resolve()):
        # --force replaces `out` whole: never the data dir, or what the export reads from
        if out == kept or out in kept.parents or (kept in out.parents and kept != settings.root.resolve()):
            raise ValueError(f"--out {out} would replace or sit inside {kept}; choose another folder")
    manifest = {
        "task": task,
        "version": version,
        "format": fmt,
        "base": read_adapter_config(settings.adapters_dir, task, version).get("base_identity") or {"path": base},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside `out` and moved into place whole: a failed export leaves no half folder and keeps what was there
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "merged":
            manifest.update(_merged(base, adapter, staging))
        elif fmt == "ollama":
            manifest.update(_ollama(settings, task, base, adapter, staging, out))
        else:
            manifest.update(_vllm(task, version, base, adapter, staging, out))
        write_json_atomic(manifest, staging / MANIFEST)
        replace_dir_atomic(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**manifest, "out": str(out)}


def pinned_base(settings: Settings, task: str, version: int) -> str:
    """The folder of the base model the adapter was trained on, checked against its pinned content hash."""
    from ft_pipeline.training.base_model import base_identity, check_adapter_base, existing_base_model

    config = read_adapter_config(settings.adapters_dir, task, version)
    pinned = (config.get("base_identity") or {}).get("path")
    source = pinned if pinned and Path(pinned).is_dir() else existing_base_model(settings)
    if source is None:
        raise FileNotFoundError(f"the base model of {task} v{version} is gone and the current knobs name no built base")
    check_adapter_base(config, base_identity(settings, source), f"{task} v{version}")
    return source


def _merged(base: str, adapter: Path, out: Path) -> dict[str, Any]:
    """The base with the adapter's weights merged in, saved as safetensors with the tokenizer."""
    from peft import PeftModel

    from ft_pipeline.training.base_model import load_base_model

    model, tokenizer = load_base_model(None, source=base)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"files": sorted(p.name for p in out.iterdir())}


def _copy_adapter(adapter: Path, dst: Path) -> None:
    """The peft files of an adapter folder (its config, weights and training config)."""
    shutil.copytree(adapter, dst, ignore=shutil.ignore_patterns(".*"))


def _ollama(settings: Settings, task: str, base: str, adapter: Path, staging: Path, out: Path) -> dict[str, Any]:
    """A Modelfile: FROM the base folder, ADAPTER the copied adapter, TEMPLATE from the chat template, SYSTEM, PARAMETERs."""
    from ft_pipeline.training.base_model import load_tokenizer

    tokenizer = load_tokenizer(settings, source=base)
    fmt = chat_format(tokenizer)
    _copy_adapter(adapter, staging / "adapter")
    stops = _stop_tokens(tokenizer, fmt)
    system = settings.default_system_prompts.get(task_of(task))
    lines = [f"FROM {base}", "ADAPTER ./adapter", f'TEMPLATE """{_triple_quoted(fmt.go_template())}"""']
    if system:
        lines.append(f'SYSTEM """{_triple_quoted(system)}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    # greedy, as `ft-pipeline generate` and the evaluation answer
    lines.append("PARAMETER temperature 0")
    (staging / "Modelfile").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"modelfile": str(out / "Modelfile"), "command": f"ollama create {task} -f {out / 'Modelfile'}", "stop": stops}


def _stop_tokens(tokenizer: Any, fmt: ChatFormat) -> list[str]:
    """The end-of-sequence token and every special token the turns are written with (a model that starts a new turn
    has finished its answer)."""
    turns = "".join(before + after for before, after in fmt.around.values()) + fmt.generation
    special = [t for t in tokenizer.all_special_tokens if t and t in turns]
    return list(dict.fromkeys([t for t in (tokenizer.eos_token, *special) if t]))


def _triple_quoted(text: str) -> str:
    """`text` as the body of a Modelfile triple-quoted value, which cannot hold three quotes in a row."""
    if '"""' in text:
        raise ValueError('a Modelfile value cannot hold """; change the system prompt or the chat template')
    return text


def _vllm(task: str, version: int, base: str, adapter: Path, staging: Path, out: Path) -> dict[str, Any]:
    """The adapter folder and the `--lora-modules` argument that serves it by the name the gateway's upstream backend
    asks for, in vLLM's `name=path` and JSON forms."""
    from ft_pipeline.serve.backends import adapter_name

    _copy_adapter(adapter, staging / "adapter")
    rank = int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16))
    module = {"name": adapter_name(task, version), "path": str(out / "adapter"), "base_model_name": base}
    argument = f"{module['name']}={module['path']}"
    # vLLM refuses adapters of a rank above --max-lora-rank (16 unless raised)
    command = f"vllm serve {base} --enable-lora --max-lora-rank {max(rank, 16)} --lora-modules {argument}"
    (staging / "lora_modules.txt").write_text(f"--lora-modules {argument}\n", encoding="utf-8")
    write_json_atomic(module, staging / "lora_modules.json")
    return {"lora_module": module, "lora_modules_argument": argument, "command": command}

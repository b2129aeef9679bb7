"""Registered adapter versions as MLflow pyfunc models: the adapter folder and a pin of its base, loaded from code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

# The models-from-code file: MLflow copies it into the model and runs it on load, so nothing is pickled.
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
ADAPTER_ARTIFACT = "adapter"
DEFAULT_MAX_NEW_TOKENS = 128
INPUT_EXAMPLE = ["Hello, who are you?"]


def chats(model_input: list[Any], system: str | None = None) -> list[list[dict[str, str]]]:
    """The chats a predict input asks for, each led by `system` when it has no system message of its own.

    Each item is a prompt, a chat (a list of role/content messages) or a record with a `prompt` or `messages` field;
    MLflow hands a DataFrame over as the list of its first column's values.
    """
    return [_chat(item, system) for item in model_input]


def _chat(item: Any, system: str | None) -> list[dict[str, str]]:
    if isinstance(item, dict):
        item = item.get("messages") if item.get("messages") is not None else item.get("prompt")
    if isinstance(item, str):
        messages = [{"role": "user", "content": item}]
    elif isinstance(item, list | tuple) or hasattr(item, "tolist"):
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in list(item)]
    else:
        raise ValueError(f"each input must be a prompt or a list of chat messages, not {type(item).__name__}")
    if not messages:
        raise ValueError("a chat needs at least one message")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def save_model(
    out: Path, mlflow_model: Any, *, adapter: Path, identity: dict[str, Any], identity_cache: Path, system: str | None
) -> None:
    """An MLflow pyfunc model in `out`: the adapter folder as an artifact, the base pinned by its folder and hash.

    The signature comes from predict's type hints and the input example, which MLflow runs the model on once.
    """
    import mlflow
    import peft
    import torch
    import transformers

    config = {
        "base_path": identity["path"],
        "base_hash": identity["hash"],
        "base_source": identity.get("source"),
        "identity_cache": str(identity_cache),
        "system_prompt": system or "",
    }
    mlflow.pyfunc.save_model(
        path=str(out),
        mlflow_model=mlflow_model,
        python_model=str(MODEL_CODE),
        artifacts={ADAPTER_ARTIFACT: str(adapter)},
        model_config=config,
        input_example=(INPUT_EXAMPLE, {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}),
        # given, so MLflow does not load the model in a subprocess to infer them
        pip_requirements=[
            f"mlflow=={mlflow.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}",
            f"peft=={peft.__version__}",
        ],
    )


class AdapterModel(PythonModel):
    """A task's adapter on its pinned base, answering each prompt or chat greedily (see `chats` for the inputs)."""

    def load_context(self, context: Any) -> None:
        """Load the pinned base (refusing one whose content changed) and the adapter on it."""
        from peft import PeftModel

        from ft_pipeline.training.base_model import BaseModelMismatch, content_hash, load_base_model
        from ft_pipeline.training.lora import resolve_device

        config = context.model_config
        base = Path(config["base_path"])
        if not (base / "config.json").is_file():
            raise FileNotFoundError(f"the pinned base model {base} is gone; this adapter only works on it")
        found = content_hash(base, Path(config["identity_cache"]))
        if found != config["base_hash"]:
            raise BaseModelMismatch(f"the base model in {base} changed (hash {found[:12]}, pinned {config['base_hash'][:12]})")
        self.device = resolve_device("auto")
        model, self.tokenizer = load_base_model(None, device=self.device, source=str(base))
        self.model = PeftModel.from_pretrained(model, context.artifacts[ADAPTER_ARTIFACT]).eval()
        self.system = config.get("system_prompt") or None

    def predict(
        self, context: Any, model_input: list[str | list[dict[str, str]]], params: dict[str, Any] | None = None
    ) -> list[str]:
        """The greedy answer to each prompt or chat of `model_input`."""
        from ft_pipeline.training.serving import complete

        max_new_tokens = int((params or {}).get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        return [
            complete(self.model, self.tokenizer, chat, max_new_tokens, self.device) for chat in chats(model_input, self.system)
        ]

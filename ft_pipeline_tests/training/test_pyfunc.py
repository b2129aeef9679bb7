"""Registered versions as MLflow pyfunc models: loaded from the registry and served by `mlflow models serve`, offline."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ft_pipeline.serve.backends import InProcessBackend, Params
from ft_pipeline.training.champion import promote
from ft_pipeline.training.serving import generate
from ft_pipeline_tests.evaluation_fixtures import build_tiny_base, tiny_settings, train_adapter
from ft_pipeline_tests.processes import free_port, wait_for_http

PROMPTS = ["Greet anna.", "Greet Alice."]
CHAT = [
    {"role": "user", "content": "Greet ben."},
    {"role": "assistant", "content": "Hi"},
    {"role": "user", "content": "Greet sam."},
]
CHAMPION = "models:/ft_pipeline.greet@champion"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A task `greet` whose champion is trained, with MLflow's tracking URI pointing at the pipeline's store."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pyfunc")
    settings = tiny_settings(root / "data", build_tiny_base(root / "base"))
    promote(settings, "greet", train_adapter(settings, "greet", word="Goodbye"), "for the pyfunc test")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
        yield settings


def test_the_champion_loads_from_the_registry_and_answers_as_the_gateway_and_generate_do(registry):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(CHAMPION)
    answers = model.predict(PROMPTS, params={"max_new_tokens": 8})
    backend = InProcessBackend(registry)
    served = [backend.complete("greet", [{"role": "user", "content": p}], Params(max_tokens=8, temperature=0)) for p in PROMPTS]
    assert answers == [c.text.strip() for c in served] == [generate(registry, "greet", p, max_new_tokens=8) for p in PROMPTS]
    assert all(c.route.version == 1 for c in served) and answers[0].startswith("Goodbye")
    # chats, and frames with a prompt or a messages column
    chat = backend.complete("greet", CHAT, Params(max_tokens=8, temperature=0)).text.strip()
    assert model.predict([CHAT], params={"max_new_tokens": 8}) == [chat]
    assert model.predict(pd.DataFrame({"messages": [CHAT]}), params={"max_new_tokens": 8}) == [chat]
    assert model.predict(pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 8}) == answers
    info = mlflow.models.get_model_info(CHAMPION)
    assert info.signature.params.to_dict()[0]["name"] == "max_new_tokens" and info.saved_input_example_info


def test_a_version_refuses_to_load_on_a_base_whose_files_changed(registry):
    import mlflow

    from ft_pipeline.training.base_model import BaseModelMismatch

    with pytest.raises(BaseModelMismatch, match="changed"):
        mlflow.pyfunc.load_model(CHAMPION, model_config={"base_hash": "0" * 64})


def test_mlflow_models_serve_serves_the_champion_offline(registry, tmp_path):
    import mlflow

    expected = mlflow.pyfunc.load_model(CHAMPION).predict(PROMPTS, params={"max_new_tokens": 8})
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "HF_HUB_OFFLINE": "1",
        # the scoring server is started as `uvicorn ...` by name
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local"]
    proc = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # mlflow starts uvicorn as a child: stopped together, by the group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(proc, f"{url}/ping", "mlflow models serve", lambda: proc.stdout.read() if proc.stdout else "")
        answer = httpx.post(f"{url}/invocations", json={"inputs": PROMPTS, "params": {"max_new_tokens": 8}}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == expected
        chat = httpx.post(f"{url}/invocations", json={"inputs": [CHAT], "params": {"max_new_tokens": 8}}, timeout=120)
        assert chat.json()["predictions"] == mlflow.pyfunc.load_model(CHAMPION).predict([CHAT], params={"max_new_tokens": 8})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

"""The gateway during a rollout, over real HTTP with the openai client: users split across arms and stay there, every
call logged with its arm and the rollout's experiment id, shadow answers logged and never shown."""

import json
import time

import pytest
from openai import OpenAI

from ft_pipeline.serve.rollout import CANDIDATE, arm, start, unit_of
from ft_pipeline.training.champion import promote
from ft_pipeline_tests.evaluation_fixtures import build_tiny_base, tiny_settings, train_adapter
from ft_pipeline_tests.serve.server import running_server

GREETING = [{"role": "user", "content": "Greet Alice."}]
ENV = {"FT_DEVICE": "cpu", "FT_TORCH_THREADS": "1", "FT_SERVE_PUBLISH_SECONDS": "1", "FT_SERVE_SHADOW_RATE": "1"}
USERS = [f"user-{i}" for i in range(200)]


@pytest.fixture(scope="module")
def rolling_out(tmp_path_factory):
    """Task `greet` with champion v1 and candidate v2 at its first stage, 50%, behind a gateway shadowing every
    champion-arm answer with the candidate."""
    root = tmp_path_factory.mktemp("rollout-gateway")
    base = build_tiny_base(root / "base")
    settings = tiny_settings(root / "data", base, rollout_tiers="half=50,100", rollout_task_tiers="*=half")
    promote(settings, "greet", train_adapter(settings, "greet", steps=0), "the first adapter")
    candidate = train_adapter(settings, "greet", steps=0)
    assert start(settings, "greet", candidate, "for the gateway test")[1]["percent"] == 50
    with running_server(settings.root, **ENV, FT_BASE_MODEL=str(base)) as url:
        yield settings, candidate, OpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback", max_retries=0)


def ask(client, user):
    answer = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=2, user=user)
    return answer.model_extra["ft_pipeline"], answer.system_fingerprint


def test_200_users_are_split_across_arms_in_proportion_stay_there_and_shadow_answers_stay_hidden(rolling_out):
    settings, candidate, client = rolling_out
    served = {user: ask(client, user) for user in USERS}
    on_candidate = {u for u, (by, _) in served.items() if by["variant"] == CANDIDATE}
    assert abs(100 * len(on_candidate) / len(USERS) - 50) <= 3
    # the arm is the deterministic one, and the version and fingerprint follow it
    assert on_candidate == {u for u in USERS if arm("greet", candidate, unit_of(u, []), 50) == CANDIDATE}
    for user, (by, fingerprint) in served.items():
        version = candidate if user in on_candidate else 1
        assert by["adapter_version"] == version and fingerprint == f"greet:v{version}"
    # a user stays on the arm
    assert all(ask(client, user)[0]["variant"] == served[user][0]["variant"] for user in USERS[:20])
    log_ids = {by["log_id"] for by, _ in served.values()}
    calls, shadows = {}, []
    for _ in range(400):  # the server publishes its spool within FT_SERVE_PUBLISH_SECONDS (1 s here)
        lines = [json.loads(line) for p in settings.inbox_dir.glob("*.jsonl") for line in p.read_text().splitlines()]
        calls = {line["log_id"]: line for line in lines if line["log_id"] in log_ids}
        shadows = [line for line in lines if line["variant"] == "shadow"]
        if len(calls) == len(log_ids) and len(shadows) >= len(USERS) - len(on_candidate):
            break
        time.sleep(0.05)
    assert len(calls) == len(log_ids)
    for call in calls.values():
        assert call["experiment_id"] == f"rollout:greet:{candidate}"
        assert call["variant"] == (CANDIDATE if call["user_id"] in on_candidate else "champion")
        assert call["adapter_version"] == str(candidate if call["variant"] == CANDIDATE else 1)
    # every champion-arm answer (rate 1) had a shadow answer by the candidate, logged as a call of its own
    assert {s["user_id"] for s in shadows} == set(USERS) - on_candidate
    assert all(s["metadata"]["shadow"] is True and s["adapter_version"] == str(candidate) for s in shadows)
    assert all(s["experiment_id"] == f"rollout:greet:{candidate}" and s["log_id"] not in log_ids for s in shadows)

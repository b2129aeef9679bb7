"""The OpenAI-compatible gateway over real HTTP, driven by the official openai client: champions, fallbacks, streaming, logging."""

import json
import time

import duckdb
import httpx
import pytest
from openai import OpenAI

from ft_pipeline.core.ingest import ingest
from ft_pipeline.core.io import partition_dates, table_glob
from ft_pipeline.core.settlements import build_partition
from ft_pipeline.training.champion import promote
from ft_pipeline_tests.evaluation_fixtures import build_tiny_base, tiny_settings, train_adapter
from ft_pipeline_tests.serve.server import running_server

GREETING = [{"role": "user", "content": "Greet Alice."}]
ENV = {"FT_DEVICE": "cpu", "FT_TORCH_THREADS": "1", "FT_SERVE_PUBLISH_SECONDS": "1"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A data dir with a tiny base, a task `greet` whose champion is trained, and a task `broken` whose champion lost its weights."""
    root = tmp_path_factory.mktemp("gateway")
    base = build_tiny_base(root / "base")
    settings = tiny_settings(root / "data", base)
    for task in ("greet", "broken", "greet.u-seg"):
        promote(settings, task, train_adapter(settings, task, word="Goodbye"), "for the gateway test")
    (settings.adapters_dir / "broken" / "1" / "adapter_model.safetensors").unlink()
    with running_server(settings.root, **ENV, FT_BASE_MODEL=str(base), FT_SEGMENT_BY="user_id") as url:
        yield settings, OpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback", max_retries=0), url


def logged_call(settings, log_id: str) -> dict:
    """The call the gateway logged under `log_id`, once its spool is published into the inbox."""
    for _ in range(200):  # the server publishes its spool within FT_SERVE_PUBLISH_SECONDS (1 s here)
        lines = [json.loads(line) for p in settings.inbox_dir.glob("*.jsonl") for line in p.read_text().splitlines()]
        call = next((line for line in lines if line["log_id"] == log_id), None)
        if call:
            return call
        time.sleep(0.05)
    raise AssertionError(f"call {log_id} never reached the inbox")


def test_the_champion_answers_in_the_openai_schema(served):
    _, client, _ = served
    answer = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8, user="u-1")
    assert answer.object == "chat.completion" and answer.model == "greet"
    assert answer.system_fingerprint == "greet:v1" and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason in {"stop", "length"}
    usage = answer.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    served_by = answer.model_extra["ft_pipeline"]
    assert served_by["adapter_version"] == 1 and served_by["fallback"] is None
    assert answer.id == f"chatcmpl-{served_by['log_id']}"
    # greedy is deterministic: the same request gets the same answer
    again = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8)
    assert again.choices[0].message.content == answer.choices[0].message.content


def test_a_user_with_a_model_of_their_own_gets_it_and_the_call_says_so(served):
    settings, client, _ = served
    answer = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=4, user="u-seg")
    served_by = answer.model_extra["ft_pipeline"]
    assert answer.system_fingerprint == "greet.u-seg:v1" and served_by["adapter"] == "greet.u-seg@1"
    assert served_by["variant"] == "segment" and answer.model == "greet"
    other = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=4, user="u-2")
    assert other.system_fingerprint == "greet:v1"
    # the logged call keeps its task; its adapter version names the segment's model, numbered apart from the task's
    call = logged_call(settings, served_by["log_id"])
    assert call["task"] == "greet" and call["adapter_version"] == "greet.u-seg:1" and call["user_id"] == "u-seg"


def test_streaming_sends_the_same_answer_piece_by_piece_with_usage(served):
    _, client, _ = served
    whole = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8)
    chunks = list(
        client.chat.completions.create(
            model="greet", messages=GREETING, temperature=0, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_no_champion_or_a_broken_one_falls_back_to_the_base_and_says_so(served):
    _, client, _ = served
    for task, reason in (("no-such-task", "no champion"), ("broken", "could not be loaded")):
        answer = client.chat.completions.create(model=task, messages=GREETING, temperature=0, max_tokens=4)
        assert answer.system_fingerprint == "base"
        assert reason in answer.model_extra["ft_pipeline"]["fallback"]
    # one broken task does not take the server down
    assert (
        client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=4).system_fingerprint
        == "greet:v1"
    )


def test_models_lists_tasks_with_their_champions_and_bad_requests_get_openai_errors(served):
    import openai

    _, client, _ = served
    listed = {m.id: m.model_extra["champion_version"] for m in client.models.list()}
    assert listed == {"broken": 1, "greet": 1}
    with pytest.raises(openai.BadRequestError, match="model must be a task name"):
        client.chat.completions.create(model="../etc", messages=GREETING)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="greet", messages=GREETING, temperature=5)


def test_every_answer_reaches_the_inbox_as_a_pending_call(served):
    settings, client, _ = served
    answer = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8, user="u-2")
    call = logged_call(settings, answer.model_extra["ft_pipeline"]["log_id"])
    assert call["task"] == "greet" and call["decision"] == "pending" and call["adapter_version"] == "1"
    assert call["prompt"] == "Greet Alice." and call["output"] == answer.choices[0].message.content
    assert call["user_id"] == "u-2" and call["completion_tokens"] == answer.usage.completion_tokens


def test_feedback_on_the_returned_log_id_reaches_the_settlements(served):
    settings, client, url = served
    answer = client.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8, user="u-3")
    log_id = answer.model_extra["ft_pipeline"]["log_id"]
    fixed = "Hello Alice, welcome back."
    sent = httpx.post(f"{url}/v1/feedback", json={"log_id": log_id, "decision": "edited", "final_output": fixed})
    assert sent.json()["results"] == [{"status": "accepted", "log_id": log_id}]
    settled = []
    for _ in range(200):  # the server publishes its spool within FT_SERVE_PUBLISH_SECONDS (1 s here)
        ingest(settings)
        for day in partition_dates(settings.lake_dir, "raw_logs"):
            build_partition(settings, day)
        settled = (
            partition_dates(settings.lake_dir, "settlements")
            and duckdb.sql(
                f"SELECT decision, final_text, adapter_version FROM read_parquet('{table_glob(settings.lake_dir, 'settlements')}') "
                f"WHERE log_id = '{log_id}'"
            ).fetchall()
        )
        if settled:
            break
        time.sleep(0.1)
    assert settled == [("edited", fixed, "1")]


def test_the_upstream_backend_loads_the_champion_into_another_server_and_asks_for_it_by_name(served):
    settings, direct, upstream = served
    expected = direct.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8)
    env = {**ENV, "FT_SERVE_BACKEND": "upstream", "FT_UPSTREAM_URL": upstream, "FT_UPSTREAM_BASE_MODEL": "base"}
    with running_server(settings.root, **env) as url:
        gateway = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = gateway.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8)
        assert answer.choices[0].message.content == expected.choices[0].message.content
        assert answer.model_extra["ft_pipeline"]["adapter"] == "greet@1" and answer.system_fingerprint == "greet:v1"
        streamed = gateway.chat.completions.create(model="greet", messages=GREETING, temperature=0, max_tokens=8, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected.choices[0].message.content
        base = gateway.chat.completions.create(model="no-champion", messages=GREETING, temperature=0, max_tokens=4)
        assert base.system_fingerprint == "base" and "no champion" in base.model_extra["ft_pipeline"]["fallback"]
    # the upstream now serves the champion by the name it was loaded under
    by_name = direct.chat.completions.create(model="greet@1", messages=GREETING, temperature=0, max_tokens=8)
    assert by_name.choices[0].message.content == expected.choices[0].message.content
    assert by_name.model_extra["ft_pipeline"]["adapter"] == "greet@1"

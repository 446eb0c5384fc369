"""The public-demo features end to end: a real hub process (`python -m demo serve`) on loopback with the
default model, the official `openai` client, a real `transformers serve` as a remote backend, auth,
limits under load, disconnects, and sharing without a network.
"""
from __future__ import annotations

import threading
import time

import httpx
import openai
import psutil
import pytest

from demo.backends import llama_cpp_status
from tests.servers import free_port, start_hub, start_transformers_serve
from tests.tiny import make_tiny_chat_model

KEY, RATE_KEY, USER, PASSWORD = "sk-test-key", "sk-rate-key", "alice", "wonderland"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, registry):
    """One `transformers serve` (tiny random Llama) and one hub in front of it and the default model."""
    tmp = tmp_path_factory.mktemp("public")
    tiny, remote_port, hub_port = tmp / "tiny", free_port(), free_port()
    smollm = registry.get("smollm2-135m").source
    (tmp / "registry.yaml").write_text(f"""
limits:
  max_message_chars: 30000
  queue_size: 8
  requests_per_minute: 100
  generation_timeout_s: 60
models:
  - id: smollm2-135m
    name: SmolLM2 135M
    source: {{package: {smollm.package}, file: {smollm.file}}}
    family: generic
    dtype: bfloat16
    engine: transformers
    context_length: 1024
  - id: smollm2-llama
    name: SmolLM2 135M on llama.cpp
    source: {{package: {smollm.package}, file: {smollm.file}}}
    family: generic
    engine: llama.cpp
  - id: remote-tiny
    name: Tiny Llama behind transformers serve
    backend: openai
    base_url: http://127.0.0.1:{remote_port}/v1
    remote_model: {tiny}
  - id: remote-locked
    name: Needs a key nobody set
    backend: openai
    base_url: http://127.0.0.1:9/v1
    api_key_env: HUB_TEST_UNSET_KEY
""")
    hub = start_hub(tmp / "registry.yaml", hub_port, "--preload", "--api-key", KEY, "--api-key", RATE_KEY,
                    "--auth", f"{USER}:{PASSWORD}")
    remote = None
    try:
        make_tiny_chat_model(tiny)  # while the hub starts; the remote is reached only when used
        remote = start_transformers_serve(tiny, remote_port, tmp / "hf")
        hub.wait_http(f"http://127.0.0.1:{hub_port}/v1/models", 240)
        remote.wait_http(f"http://127.0.0.1:{remote_port}/health", 120)
        yield {"hub": hub, "url": f"http://127.0.0.1:{hub_port}", "tiny": tiny,
               "remote_url": f"http://127.0.0.1:{remote_port}/v1", "registry": tmp / "registry.yaml"}
    finally:
        hub.stop()
        if remote is not None:
            remote.stop()


@pytest.fixture(scope="module")
def client(servers):
    return openai.OpenAI(base_url=servers["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120,
                         http_client=httpx.Client(trust_env=False))


def metrics(servers, token=KEY) -> dict:
    return httpx.get(servers["url"] + "/metrics", headers={"Authorization": f"Bearer {token}"},
                     trust_env=False, timeout=10).json()


# -- the OpenAI client ---------------------------------------------------------------------------
def test_lists_the_models_that_are_here(client):
    ids = {m.id for m in client.models.list()}
    assert {"smollm2-135m", "remote-tiny"} <= ids
    assert "remote-locked" not in ids  # its API key variable is unset


def test_non_streaming_chat(client):
    reply = client.chat.completions.create(model="smollm2-135m", messages=FRANCE, max_tokens=24, temperature=0)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens <= 24


def test_streaming_chat_in_openai_format(client):
    stream = client.chat.completions.create(model="smollm2-135m", messages=FRANCE, max_tokens=24,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens > 3 and not chunks[-1].choices
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("model", ["smollm2-135m", "smollm2-llama"])  # the transformers and llama.cpp engines
def test_logprobs_in_the_clients_types_streaming_and_not(client, model):
    if model == "smollm2-llama" and not llama_cpp_status()[0]:
        pytest.skip(llama_cpp_status()[1])
    args = dict(model=model, messages=FRANCE, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    choice = client.chat.completions.create(**args).choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content and len(entries) <= 8
    for e in entries:  # greedy: each token is its step's most likely; bytes are its text's
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob
        assert len(e.top_logprobs) == 3 and bytes(e.bytes).decode() == e.token
    streamed = [c.choices[0] for c in client.chat.completions.create(**args, stream=True) if c.choices]
    for c in streamed:  # each delta carries the entries of its tokens
        assert "".join(e.token for e in (c.logprobs.content if c.logprobs else [])) == (c.delta.content or "")
    assert [e.token for c in streamed if c.logprobs for e in c.logprobs.content] == [e.token for e in entries]


def test_top_logprobs_needs_logprobs_and_at_most_20(client):
    for extra in ({"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="smollm2-135m", messages=FRANCE, max_tokens=2, **extra)
        assert caught.value.body["param"] == "top_logprobs"


def test_unknown_model_is_a_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=FRANCE)
    assert caught.value.code == "model_not_found" and "gpt-17" in caught.value.message


def test_prompt_longer_than_the_context_is_context_length_exceeded(client):
    long = [{"role": "user", "content": "hello " * 2000}]  # about 2000 tokens; the context is 1024
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2-135m", messages=long, max_tokens=8)
    assert caught.value.code == "context_length_exceeded"


def test_message_over_the_cap_is_refused_with_the_limit(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x" * 30001}])
    assert caught.value.code == "message_too_long" and "30,000" in caught.value.message


def test_wrong_or_missing_key_is_refused(servers):
    for key in ("sk-wrong", f"{USER}:not-the-password"):
        bad = openai.OpenAI(base_url=servers["url"] + "/v1", api_key=key, max_retries=0,
                            http_client=httpx.Client(trust_env=False))
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert caught.value.code == "invalid_api_key"
    assert httpx.get(servers["url"] + "/v1/models", trust_env=False).status_code == 401


def test_rate_limit_per_client(servers, client):
    rated = openai.OpenAI(base_url=servers["url"] + "/v1", api_key=RATE_KEY, max_retries=0,
                          http_client=httpx.Client(trust_env=False))
    for _ in range(100):  # unknown model: charged, then refused at once (no generation)
        with pytest.raises(openai.NotFoundError):
            rated.chat.completions.create(model="no-such-model", messages=FRANCE)
    with pytest.raises(openai.RateLimitError) as caught:
        rated.chat.completions.create(model="smollm2-135m", messages=FRANCE)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers.get("retry-after")
    with pytest.raises(openai.NotFoundError):  # another client is not affected
        client.chat.completions.create(model="no-such-model", messages=FRANCE)


# -- remote engine: transformers serve behind the hub ---------------------------------------------
def test_remote_model_streams_through_the_hub_api(client):
    stream = client.chat.completions.create(model="remote-tiny", messages=FRANCE, max_tokens=6, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 3  # streamed token by token from the remote, relayed by the hub
    assert chunks[-1].choices[0].finish_reason == "length"


def test_logprobs_are_forwarded_to_the_remote(client):
    """transformers serve ignores logprobs (its log says so): the reply comes, with none to pass on."""
    reply = client.chat.completions.create(model="remote-tiny", messages=FRANCE, max_tokens=4, logprobs=True,
                                           top_logprobs=2)
    assert reply.choices[0].message.content and reply.choices[0].logprobs is None


def test_remote_model_streams_through_the_ui_path(servers):
    """The Chat tab's handlers with a hub whose registry has the remote: same Chunk stream as a local model."""
    from demo.app import make_hub
    from demo.ui import chat_handlers as h

    hub = make_hub(servers["registry"])
    text, session, view, status = h.user_message("Hello there", h.new_session(), None, hub)
    assert status == "" and view[-1]["content"] == "Hello there"
    controls = (True, 0.0, 1.0, 0, 1.0, 6, -1, True)  # custom sampling: greedy, 6 tokens
    updates = list(h.bot_reply(hub, session, "remote-tiny", "", *controls))
    turn = session.turns[-1]
    assert turn.role == "assistant" and turn.model == "remote-tiny" and turn.content
    assert "⚠️" not in turn.footer and "6 tokens" in turn.footer and "length" in turn.footer
    assert len(updates) >= 2  # the first text at once, then the rest (coalesced) with the footer


def test_remote_generation_cancels_and_a_dead_remote_is_an_error_not_a_crash(servers):
    from demo.engine import CancelToken, stream_chat
    from demo.registry import parse_registry
    from demo.manager import ModelManager

    registry = parse_registry(f"""
models:
  - {{id: tiny, name: Tiny, backend: openai, base_url: "{servers['remote_url']}", remote_model: "{servers['tiny']}"}}
  - {{id: dead, name: Dead, backend: openai, base_url: "http://127.0.0.1:9/v1"}}
""")
    manager = ModelManager(registry)
    tiny = manager.get("tiny")
    # A loaded remote has a row like any model (the Models tab and /v1/models read it).
    state = manager.state("tiny")
    assert (state.status, state.engine, state.quant_format, state.memory_bytes) == ("ready", "openai", "remote", 0)
    cancel, deltas = CancelToken(), []
    for chunk in stream_chat(tiny, FRANCE, tiny.defaults.override({"max_new_tokens": 200}), cancel):
        deltas.append(chunk.delta)
        if len(deltas) == 3:
            cancel.cancel()
    assert chunk.finish_reason == "cancelled" and len(deltas) <= 5
    dead = list(stream_chat(manager.get("dead"), FRANCE))[-1]
    assert dead.finish_reason == "error" and dead.code == "remote_error" and "127.0.0.1:9" in dead.error


# -- auth on the UI ---------------------------------------------------------------------------------
def test_ui_refuses_without_login_and_works_with_it(servers):
    url = servers["url"]
    anonymous = httpx.Client(trust_env=False, timeout=30)
    assert anonymous.get(url + "/config").status_code == 401
    assert anonymous.post(url + "/gradio_api/queue/join", json={}).status_code == 401
    assert anonymous.post(url + "/login", data={"username": USER, "password": "nope"}).status_code >= 400
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(url, verbose=False)
    ui = Client(url, auth=(USER, PASSWORD), verbose=False)
    ui.predict("What is the capital of France?", api_name="/send")
    chat, status = ui.predict("smollm2-135m", "", True, 0.0, 1.0, 0, 1.0, 16, -1, True, api_name="/reply")
    content = chat[-1]["content"]
    text = content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
    assert chat[-1]["role"] == "assistant" and "Paris" in text, chat


# -- limits under load, and disconnects ---------------------------------------------------------------
def test_thirty_streaming_clients_complete_or_get_busy_and_memory_returns(servers, client):
    hub = psutil.Process(servers["hub"].proc.pid)
    client.chat.completions.create(model="smollm2-135m", messages=FRANCE, max_tokens=4)  # warm
    rss_before = hub.memory_info().rss
    outcomes: list[str] = []

    def one(i):
        try:
            stream = client.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6,
                stream=True)
            finish = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
            outcomes.append(f"done:{finish[-1]}")
        except openai.RateLimitError as e:
            outcomes.append(f"busy:{e.code}")
        except Exception as e:  # anything else is a failure the assertion shows
            outcomes.append(f"failed:{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(30)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 150
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert len(outcomes) == 30
    assert all(o in ("done:stop", "done:length", "busy:server_busy") for o in outcomes), outcomes
    assert outcomes.count("busy:server_busy") >= 30 - 9 - 2  # 1 running + 8 waiting (+ slack for timing)
    assert any(o.startswith("done") for o in outcomes)
    state = metrics(servers)
    assert state["models"]["smollm2-135m"]["in_flight"] == 0
    assert state["counts"]["smollm2-135m"]["server_busy"] >= 1
    growth = hub.memory_info().rss - rss_before
    assert growth < 150 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB"


@pytest.mark.parametrize("model", ["smollm2-135m", "smollm2-llama"])  # the transformers and llama.cpp engines
def test_client_that_disconnects_stops_its_generation(servers, model):
    if model == "smollm2-llama" and not llama_cpp_status()[0]:
        pytest.skip(llama_cpp_status()[1])
    auth = {"Authorization": f"Bearer {USER}:{PASSWORD}"}  # its own client name in /metrics
    body = {"model": model, "messages": [{"role": "user", "content": "Write a long story about a cat."}],
            "max_tokens": 400, "stream": True, "temperature": 0.7, "seed": 7}
    started = time.time()  # this client's records of other tests on this model are older
    mine = lambda: [r for r in metrics(servers)["recent"]  # noqa: E731
                    if r["client"] == f"user:{USER}" and r["model"] == model and r["at"] >= started]
    received = 0
    with httpx.Client(trust_env=False, timeout=60) as http:
        with http.stream("POST", servers["url"] + "/v1/chat/completions", json=body, headers=auth) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"content":"' in line:
                    received += 1
                if received >= 5:
                    break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 30
    while not (records := mine()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert records, "the cancelled generation never finished"
    assert records[-1]["finish_reason"] == "cancelled", records[-1]
    assert records[-1]["new_tokens"] <= received + 10, records[-1]  # stopped within a few steps, not at 400


def test_password_guessing_backs_off_and_api_keys_still_work(servers, client):
    """Runs last on this server: the guesses lock its loopback address for `user:password` logins."""
    url = servers["url"] + "/v1/models"
    guess = lambda n: httpx.get(url, headers={"Authorization": f"Bearer mallory:guess{n}"},  # noqa: E731
                                trust_env=False, timeout=30)
    codes = [guess(n).status_code for n in range(6)]
    assert codes[:3] == [401, 401, 401] and 429 in codes[3:], codes
    throttled = guess(99)
    assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_failed_logins"
    assert int(throttled.headers["retry-after"]) >= 1
    assert httpx.post(servers["url"] + "/login", data={"username": USER, "password": "nope"},
                      trust_env=False).status_code == 429  # the login page backs off for this address too
    assert {m.id for m in client.models.list()} >= {"smollm2-135m"}  # an API key is not a login


# -- sharing without a network -------------------------------------------------------------------------
def test_share_without_network_says_so_and_serves_locally(tmp_path, registry):
    port = free_port()
    hub = start_hub(registry.path, port, "--share", env={"HF_HOME": str(tmp_path / "hf")})  # no frpc there
    try:
        warning = hub.wait_for_line("WARNING: sharing publicly without --auth", 120)
        line = hub.wait_for_line("Share link unavailable", 90)
        assert f"still serving locally on http://127.0.0.1:{port}" in line
        hub.wait_http(f"http://127.0.0.1:{port}/v1/models", 30, ok=(200,))
        assert httpx.get(f"http://127.0.0.1:{port}/config", trust_env=False).status_code == 200
        assert len([l for l in hub.lines if "share" in l.lower()]) <= 2, hub.output  # one line, not a page
        assert warning
    finally:
        hub.stop()

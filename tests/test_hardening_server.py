"""Hostile and careless requests against a real `python -m demo serve` process (a tiny random Llama, so
replies are quick): one bad request never hurts other users.

The server trusts 127.0.0.2 as a proxy (`--trusted-proxies 127.0.0.2`): a client that connects from
127.0.0.2 names itself with X-Forwarded-For, so each test has its own identity for the rate limit, while a
client on 127.0.0.1 cannot. The last test stops the server with SIGTERM.
"""
from __future__ import annotations

import itertools
import json
import random
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.servers import free_port, start_hub
from tests.tiny import make_tiny_chat_model

pytestmark = pytest.mark.slow

MODEL, RATE = "tiny", 20
PROXY = "127.0.0.2"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    make_tiny_chat_model(tmp / "tiny")
    (tmp / "registry.yaml").write_text(f"""
limits: {{requests_per_minute: {RATE}, max_new_tokens: 400}}
models:
  - id: {MODEL}
    name: Tiny random Llama
    source: {{path: "{tmp / 'tiny'}"}}
    family: generic
    dtype: float32
    generation: {{temperature: 1.0, top_p: 1.0, top_k: 0, seed: 1, max_new_tokens: 16}}
""")
    port = free_port()
    process = start_hub(tmp / "registry.yaml", port, "--preload", "--trusted-proxies", PROXY)
    try:
        process.wait_http(f"http://127.0.0.1:{port}/v1/models", 240, ok=(200,))
        yield {"url": f"http://127.0.0.1:{port}", "process": process}
    finally:
        process.stop()


def visitor(name: str | None = None, timeout: float = 60) -> httpx.Client:
    """A client with an identity of its own: it connects from the trusted proxy address, which names it."""
    name = name or f"198.51.100.{next(_names)}"
    return httpx.Client(transport=httpx.HTTPTransport(local_address=PROXY), trust_env=False, timeout=timeout,
                        headers={"X-Forwarded-For": name})


def body(content="Tell me a story.", **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def post(hub, payload, client: httpx.Client | None = None, raw: bytes | None = None) -> httpx.Response:
    with client or visitor() as http:
        return http.post(hub["url"] + "/v1/chat/completions", content=raw if raw is not None else json.dumps(payload),
                         headers={"Content-Type": "application/json"})


def stream_text(hub, payload, started: threading.Event | None = None) -> dict:
    """Stream one reply; the text, the finish reason, an error event, and whether [DONE] came."""
    out = {"text": "", "finish": None, "error": None, "done": False}
    with visitor() as http, http.stream("POST", hub["url"] + "/v1/chat/completions",
                                        json={**payload, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                out["error"] = event["error"]
                continue
            for choice in event["choices"]:
                out["text"] += choice["delta"].get("content") or ""
                out["finish"] = choice["finish_reason"] or out["finish"]
                if out["text"] and started is not None:
                    started.set()
    return out


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


DEEP = ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "metadata": %s%s}'
        % (MODEL, "[" * 1000, "]" * 1000)).encode()
POISONS = {
    "tiny temperature": json.dumps(body(temperature=1e-45)).encode(),
    "huge seed": json.dumps(body(seed=2**70)).encode(),
    "lone surrogate": json.dumps(body("a\ud800b")).encode(),  # json.dumps writes it as the escape \ud800
    "deep JSON": DEEP,
    "NaN": json.dumps(body(top_p=float("nan"))).encode(),
    "five stops": json.dumps(body(stop=list("abcde"))).encode(),
    "null user content": json.dumps(body(None)).encode(),
}


def test_poison_requests_get_their_4xx_and_four_streams_beside_them_finish_whole(hub):
    replies = [body(f"Story number {k}.", max_tokens=300, temperature=1.0, seed=k) for k in range(4)]
    alone = [stream_text(hub, r) for r in replies]  # each reply by itself: what the streams must still give
    assert all(a["finish"] in ("stop", "length") and a["done"] for a in alone), alone
    started = [threading.Event() for _ in replies]
    results = [None] * 4

    def run(k):
        results[k] = stream_text(hub, replies[k], started[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    assert all(s.wait(60) for s in started)
    answers = {name: post(hub, None, raw=raw) for name, raw in POISONS.items()}  # while the four decode
    still_running = sum(t.is_alive() for t in threads)
    for t in threads:
        t.join(120)
    for name, response in answers.items():
        assert_openai_error(response, 400)
    assert "temperature" in answers["tiny temperature"].json()["error"]["message"]
    assert "seed" in answers["huge seed"].json()["error"]["param"]
    assert "surrogate" in answers["lone surrogate"].json()["error"]["message"]
    assert "nests deeper" in answers["deep JSON"].json()["error"]["message"]
    assert [r["text"] for r in results] == [a["text"] for a in alone]
    assert all(r["finish"] == a["finish"] and r["done"] and r["error"] is None for r, a in zip(results, alone))
    assert still_running >= 1, "the streams ended before the poisons were sent: make them longer"


def test_a_body_over_the_cap_is_refused_before_it_is_read(hub):
    host, port = hub["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 20000000\r\n\r\n" + b"{" * 1000)  # 20 MB announced, 1 KB sent
        answer = b""
        while chunk := s.recv(65536):  # the server answers, then closes: the rest is never read
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and '"code":"request_too_large"' in answer.replace(" ", "")
    big = post(hub, body("x" * 900_000))  # under 1 MB: read, then refused by the message limit
    assert_openai_error(big, 400, "message_too_long")


def test_forwarded_for_changes_no_identity_unless_it_comes_from_a_trusted_proxy(hub):
    unknown = body(model="no-such-model")  # charged to the rate limit, then a quick 404
    with httpx.Client(trust_env=False, timeout=30) as direct:  # from 127.0.0.1: not a trusted proxy
        codes = [direct.post(hub["url"] + "/v1/chat/completions", json=unknown,
                             headers={"X-Forwarded-For": f"203.0.113.{k}"}).status_code for k in range(RATE + 1)]
    assert codes == [404] * RATE + [429], codes  # a new header each time, still one client
    with visitor("6.6.6.6, 203.0.113.50") as proxied:  # the proxy appended the real client, right-most
        codes = [proxied.post(hub["url"] + "/v1/chat/completions", json=unknown).status_code for _ in range(RATE)]
        assert codes == [404] * RATE
        spoofed = proxied.post(hub["url"] + "/v1/chat/completions", json=unknown,
                               headers={"X-Forwarded-For": "7.7.7.7, 203.0.113.50"})
    assert_openai_error(spoofed, 429, "rate_limit_exceeded")  # the client-written left entry is not its name
    assert post(hub, unknown).status_code == 404  # another proxied client has its own budget


def test_stop_strings_end_the_reply_before_them(hub):
    plain = post(hub, body(max_tokens=60, seed=3)).json()["choices"][0]["message"]["content"]
    stop = plain[10:13]
    assert len(stop) == 3 and plain.find(stop) >= 1, plain
    reply = post(hub, body(max_tokens=60, seed=3, stop=[stop, "never appears 1234"])).json()
    assert reply["choices"][0]["message"]["content"] == plain[:plain.find(stop)]
    assert reply["choices"][0]["finish_reason"] == "stop"
    streamed = stream_text(hub, body(max_tokens=60, seed=3, stop=stop))
    assert streamed["text"] == plain[:plain.find(stop)] and streamed["finish"] == "stop"


def fuzz_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "big", "float", "str", "odd", "none", "bool"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-5, 600)
    if kind == "big":
        return rng.choice([2**63, 2**64, -2**70, 10**30])
    if kind == "float":
        return rng.choice([0.0, 1e-45, 0.005, 0.5, 1.0, 2.0, 7.5, -1.0, 1e308])
    if kind == "str":
        return rng.choice(["", "user", "assistant", "system", "tool", "tiny", "hi", "x" * 300, ".", "\u4e2d"])
    if kind == "odd":
        return rng.choice(["a\ud800b", "\udfff", "<|im_end|>", "\x00", "{{", "\\"])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(["role", "content", "type", "text", "x"]): fuzz_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def fuzz_body(rng: random.Random) -> dict:
    """A valid request with a few fields replaced, removed or added."""
    payload = body("Hi", max_tokens=rng.randint(1, 8), stream=rng.random() < 0.3)
    fields = ["model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p",
              "top_k", "seed", "stop", "n", "stream_options", "frequency_penalty"]
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(fields + ["messages.0.role", "messages.0.content", "messages.1"])
        if field.startswith("messages.") and isinstance(payload.get("messages"), list):
            _, index, *key = field.split(".")
            messages = payload["messages"]
            if key and messages and isinstance(messages[0], dict):
                messages[0][key[0]] = fuzz_value(rng)
            else:
                messages.append(fuzz_value(rng))
        elif rng.random() < 0.2:
            payload.pop(field, None)
        else:
            payload[field] = fuzz_value(rng)
    if isinstance(payload.get("max_tokens"), int) and payload["max_tokens"] > 8:
        payload["max_tokens"] = 8  # keep the valid ones short: this tests the schema, not decoding
    return payload


def test_fuzzed_requests_never_get_a_500_and_the_server_keeps_answering(hub):
    rng = random.Random(18)
    statuses = {}
    for k in range(150):
        payload = fuzz_body(rng)
        response = post(hub, payload)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500 or response.status_code in (503, 504), (payload, response.text)
        if response.status_code >= 400:
            assert_openai_error(response, response.status_code)
        elif response.headers["content-type"].startswith("text/event-stream"):  # `stream` may be 1 or "true"
            assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
        else:
            assert response.json()["object"] == "chat.completion"
    assert statuses.get(200, 0) >= 5 and statuses.get(400, 0) >= 50, statuses  # both kinds were exercised
    with visitor() as http:
        assert http.get(hub["url"] + "/v1/models").json()["data"][0]["id"] == MODEL


def test_sigterm_ends_open_streams_with_a_final_message_and_exits_within_10_s(hub):
    process = hub["process"]
    started = [threading.Event() for _ in range(2)]
    results = [None, None]

    def run(k):
        results[k] = stream_text(hub, body(f"A long story {k}.", max_tokens=400, temperature=1.0, seed=k),
                                 started[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    assert all(s.wait(60) for s in started)
    signalled = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    process.proc.wait(10)
    exited_s = time.monotonic() - signalled
    for t in threads:
        t.join(10)
    assert exited_s <= 10
    for result in results:
        assert result is not None and result["text"]
        assert result["error"] is not None and result["error"]["code"] == "server_shutdown", result
        assert "shutting down" in result["error"]["message"]

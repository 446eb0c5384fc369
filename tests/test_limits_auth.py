"""Limits, auth and the remote-entry registry format, on fakes (no model, no network)."""
import threading

import pytest

from demo.auth import AuthError, build_access, check_password, hash_password, read_auth_file
from demo.engine import complete, stream_chat
from demo.limits import BUSY, MESSAGE_TOO_LONG, TOO_MANY_TURNS, Gate, LimitError, RateLimiter
from demo.registry import Limits, RegistryError, parse_registry
from tests.fakes import scripted

USER = [{"role": "user", "content": "hi"}]


# -- limits in the engine: every caller gets them ---------------------------------------------------
def test_a_full_wait_line_answers_busy_at_once_and_frees_again():
    loaded = scripted("abcdefgh", step_s=0.05)
    loaded.gate = Gate(concurrency=1, queue_size=1)
    streams = [stream_chat(loaded, USER), stream_chat(loaded, USER)]
    firsts = [next(s) for s in streams[:1]]  # the first runs
    waiting = threading.Thread(target=lambda: list(streams[1]))  # the second waits on the model's lock
    waiting.start()
    while loaded.gate.in_flight < 2:
        pass
    busy = complete(loaded, USER)
    assert busy.finish_reason == "error" and busy.code == BUSY and "busy" in busy.error
    assert loaded.gate.rejected == 1
    list(streams[0])
    waiting.join(10)
    assert loaded.gate.in_flight == 0 and firsts
    assert complete(loaded, USER).finish_reason == "stop"


def test_max_new_tokens_is_capped_by_the_hub_limit():
    loaded = scripted("abcdefghij", max_new_tokens=100)
    loaded.limits = Limits(max_new_tokens=3)
    last = complete(loaded, USER, loaded.defaults.override({"max_new_tokens": 50}))
    assert (last.finish_reason, last.text) == ("length", "abc")


def test_message_and_turn_caps_refuse_with_a_code_and_a_clear_reason():
    loaded = scripted("abc")
    loaded.limits = Limits(max_message_chars=10, max_turns=2)
    long = complete(loaded, [{"role": "user", "content": "x" * 11}])
    assert long.code == MESSAGE_TOO_LONG and "11 characters" in long.error and "allows 10" in long.error
    turns = [{"role": "system", "content": "s"}] + [{"role": r, "content": "m"} for r in ("user", "assistant", "user")]
    many = complete(loaded, turns)
    assert many.code == TOO_MANY_TURNS and "3 messages" in many.error
    assert loaded.model.steps_run == 0  # refused before generating


def test_generation_timeout_from_the_limits_ends_the_reply_with_an_error():
    loaded = scripted("a" * 200, step_s=0.05)
    loaded.limits = Limits(generation_timeout_s=0.5)
    last = complete(loaded, USER)
    assert last.finish_reason == "error" and last.code == "timeout" and "0.5 s" in last.error
    assert loaded.model.finished.wait(5) and loaded.model.steps_run < 200


def test_rate_limiter_counts_per_client_in_a_window():
    limiter = RateLimiter(2, window_s=0.3)
    limiter.charge("a"), limiter.charge("a"), limiter.charge("b")
    with pytest.raises(LimitError) as caught:
        limiter.charge("a")
    assert caught.value.code == "rate_limit_exceeded" and caught.value.retry_after_s > 0
    import time

    time.sleep(0.35)
    limiter.charge("a")
    RateLimiter(0).charge("anyone")  # 0: no limit


# -- auth -----------------------------------------------------------------------------------------
def test_password_hashes_verify_and_reject():
    stored = hash_password("s3cret", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert check_password("s3cret", stored) and not check_password("S3cret", stored)
    assert not check_password("s3cret", "md5$x$y$z") and not check_password("s3cret", "garbage")


def test_auth_file_lines_and_their_errors(tmp_path):
    good = tmp_path / "users"
    good.write_text(f"# team\nbob:{hash_password('pw', iterations=1000)}\n\n")
    access = build_access(["amy:pa:ss"], str(good), ["key-1"])
    assert access.check_user("bob", "pw") and access.check_user("amy", "pa:ss")
    assert not access.check_user("bob", "nope") and not access.check_user("eve", "pw")
    assert access.check_bearer("key-1") == "key:key-1" and access.check_bearer("amy:pa:ss") == "user:amy"
    assert access.check_bearer("key-2") is None and access.check_bearer("amy:wrong") is None
    bad = tmp_path / "bad"
    bad.write_text("# ok\nbob:plaintext\n")
    with pytest.raises(AuthError, match=r"bad:2: expected user:pbkdf2_sha256"):
        read_auth_file(bad)
    with pytest.raises(AuthError, match="user:password"):
        build_access(["no-colon"], None, None)


# -- registry: limits section and remote entries -----------------------------------------------------
REMOTE = """\
limits:
  queue_size: 2
  requests_per_minute: 0
models:
  - id: big
    name: Big model on the GPU box
    backend: openai
    base_url: http://gpu-box:8000/v1
    api_key_env: GPU_BOX_KEY
    remote_model: meta-llama/Llama-3.1-70B-Instruct
    concurrency: 32
"""


def test_remote_entry_and_limits_parse():
    registry = parse_registry(REMOTE, "reg.yaml")
    entry = registry.get("big")
    assert entry.remote and entry.source is None and entry.concurrency == 32
    assert registry.limits.queue_size == 2 and registry.limits.max_new_tokens == 1024


@pytest.mark.parametrize("change, message", [
    (("    api_key_env: GPU_BOX_KEY\n", "    api_key_env: GPU_BOX_KEY\n    source: {path: /x}\n"),
     "reg.yaml:5: models[0]: an `engine: openai` model has no `source`"),
    (("    base_url: http://gpu-box:8000/v1\n", ""), "reg.yaml:5: models[0]: `engine: openai` needs `base_url`"),
    (("  queue_size: 2\n", "  queue_sise: 2\n"), "reg.yaml:2: limits.queue_sise: unknown key 'queue_sise'"),
    (("  queue_size: 2\n", "  queue_size: -1\n"), "reg.yaml:2: limits.queue_size: "),
    (("    backend: openai\n", "    backend: vllm\n"), "reg.yaml:7: models[0].backend: "),
])
def test_bad_remote_entries_and_limits_name_file_line_and_key(change, message):
    with pytest.raises(RegistryError) as caught:
        parse_registry(REMOTE.replace(*change), "reg.yaml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_local_entry_cannot_take_remote_keys():
    text = "models:\n  - id: a\n    name: A\n    source: {path: /x}\n    base_url: http://h/v1\n"
    with pytest.raises(RegistryError, match="base_url only apply to `engine: openai`"):
        parse_registry(text, "r.yaml")


def test_chat_tab_send_is_rate_limited_per_client_and_keeps_the_text():
    from demo.hub import Hub
    from demo.manager import ModelManager
    from demo.ui import chat_handlers as h

    registry = parse_registry(REMOTE.replace("requests_per_minute: 0", "requests_per_minute: 1"), "reg.yaml")
    hub = Hub(registry, ModelManager(registry))
    session = h.new_session()
    assert h.user_message("first", session, None, hub)[3] == ""
    text, session, view, status = h.user_message("second", session, None, hub)
    assert text == "second" and "too many requests" in status and len(session.turns) == 1


def test_forwarded_for_is_believed_only_from_named_proxies():
    """uvicorn takes the right-most untrusted X-Forwarded-For entry from these addresses only; the real
    process test (tests/test_hardening_server.py) shows a spoofed header changing nothing."""
    from demo.hub import Hub
    from demo.manager import ModelManager
    from demo.server import forwarded_allow

    registry = parse_registry(REMOTE, "reg.yaml")
    hub = Hub(registry, ModelManager(registry))
    assert forwarded_allow(hub, share=False) == []  # the socket address, whatever the headers say
    assert forwarded_allow(hub, share=True) == ["127.0.0.1", "::1"]  # the tunnel's end; frps appends the visitor
    hub.trusted_proxies = ("10.0.0.0/8",)
    assert forwarded_allow(hub, share=False) == ["10.0.0.0/8"]

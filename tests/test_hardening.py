"""Public-demo hardening on fakes (no model, no server): sampling ranges, bad text, `stop`, every generation
charged to the rate limit, escaped link values, model management for admins only, login back-off.
The same behaviour through a real server process is in tests/test_hardening_server.py."""
from types import SimpleNamespace

import pytest

from demo.auth import LoginThrottle
from demo.engine import complete
from demo.hub import Hub
from demo.limits import INVALID
from demo.manager import ModelManager
from demo.params import GenerationParams
from demo.registry import parse_registry
from demo.ui import chat_handlers as chat
from demo.ui import compare_handlers as compare
from demo.ui import models_handlers
from demo.ui.widgets import literal
from tests.fakes import scripted

USER = [{"role": "user", "content": "hi"}]
REGISTRY = "limits: {requests_per_minute: 2}\nmodels:\n" + "".join(
    f"  - id: {m}\n    name: {m.title()}\n    source: {{path: /nowhere/{m}}}\n" for m in ("alpha", "beta"))


@pytest.fixture
def hub():
    registry = parse_registry(REGISTRY)
    hub = Hub(registry, ModelManager(registry, loader=lambda entry: scripted(f"{entry.id} says hi")))
    hub.available_ids = lambda: ["alpha", "beta"]  # scripted models: no weights to find
    return hub


def visitor(host="198.51.100.4", username=None):
    return SimpleNamespace(username=username, client=SimpleNamespace(host=host), headers={})


@pytest.mark.parametrize("values, words", [
    ({"temperature": 1e-45}, "temperature must be 0"), ({"temperature": 2.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"seed": 2**70}, "64-bit"), ({"seed": -2**63 - 1}, "64-bit"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"stop": ("a", "b", "c", "d", "e")}, "at most 4"),
    ({"stop": ("",)}, "stop string"), ({"stop": ("x" * 201,)}, "stop string"),
])
def test_sampling_outside_the_ranges_is_refused_before_any_work(values, words):
    loaded = scripted("abc")
    last = complete(loaded, USER, loaded.defaults.override(values))
    assert last.finish_reason == "error" and last.code == INVALID and words in last.error, last.error
    assert loaded.model.steps_run == 0


def test_sampling_at_the_edges_of_the_ranges_is_accepted():
    for values in ({"temperature": 0.0}, {"temperature": 0.01}, {"temperature": 2.0}, {"top_p": 1.0},
                   {"top_k": 0}, {"seed": 2**64 - 1}, {"seed": -2**63}, {"stop": ("a", "b", "c", "d")}):
        assert GenerationParams().override(values).problem() is None, values


def test_a_lone_surrogate_in_a_message_or_a_stop_is_refused_as_invalid_text():
    loaded = scripted("abc")
    last = complete(loaded, [{"role": "user", "content": "a\ud800b"}])
    assert last.code == INVALID and "not valid text" in last.error
    last = complete(loaded, USER, loaded.defaults.override({"stop": ("\udfff",)}))
    assert last.code == INVALID and loaded.model.steps_run == 0


def test_stop_strings_end_the_reply_before_them_even_split_across_tokens():
    loaded = scripted("Hello there. More text after.")
    last = complete(loaded, USER, loaded.defaults.override({"stop": ("e. M",)}))
    assert (last.text, last.finish_reason) == ("Hello ther", "stop")
    assert loaded.model.steps_run < len("Hello there. More text after.")


def test_stop_goes_to_a_remote_model_too():
    from demo.remote import RemoteModel

    remote = RemoteModel("r", "http://gpu-box/v1", "big", None, GenerationParams())
    assert remote.request_body(USER, GenerationParams(stop=(".", "\n\n")))["stop"] == [".", "\n\n"]
    assert "stop" not in remote.request_body(USER, GenerationParams())


def test_every_chat_generation_is_charged_a_send_once_a_regenerate_again(hub):
    controls = (False, 0.7, 0.9, 50, 1.0, 64, -1, True)
    request = visitor()
    _, session, _, status = chat.user_message("go", chat.new_session(), request, hub)
    assert status == ""
    *_, status = list(chat.bot_reply(hub, session, "alpha", "", *controls, request=request))[-1]
    assert status == "" and session.turns[-1].content == "alpha says hi"  # the send paid for it
    chat.retry(session)
    *_, status = list(chat.bot_reply(hub, session, "alpha", "", *controls, request=request))[-1]
    assert status == "" and session.turns[-1].content == "alpha says hi"  # the second of 2 per minute
    chat.retry(session)
    *_, status = list(chat.bot_reply(hub, session, "alpha", "", *controls, request=request))[-1]
    assert "too many requests" in status and "No reply was made" in status
    assert [t.role for t in session.turns] == ["user"]  # no third reply
    *_, status = list(chat.bot_reply(hub, session, "alpha", "", *controls, request=visitor("198.51.100.5")))[-1]
    assert status == "" and session.turns[-1].content == "alpha says hi"  # another client has its own budget
    assert sum(hub.metrics.counts.values()) == 3  # /metrics counts the UI's replies like the API's
    assert {r["client"] for r in hub.metrics.recent} == {"ip:198.51.100.4", "ip:198.51.100.5"}


def test_compare_regenerate_all_is_charged_too(hub):
    request, session = visitor(), compare.new_session()
    compare.user_message(hub, "hi", ["alpha", "beta"], session, request)
    assert list(compare.reply(hub, session, True, request=request))[-1][-1] == ""
    for expected in ("", "too many requests"):
        compare.retry(session)
        status = list(compare.reply(hub, session, True, request=request))[-1][-1]
        assert expected in status, status
    assert sum(hub.metrics.counts.values()) == 4  # two rounds of two panes


def test_the_ui_uses_the_hubs_message_limit(hub):
    hub.registry.limits = hub.registry.limits.model_copy(update={"max_message_chars": 10})
    text, _, _, status = chat.user_message("x" * 11, chat.new_session(), visitor(), hub)
    assert text == "x" * 11 and "the limit is 10" in status


@pytest.mark.parametrize("value", [
    "x` ![pixel](http://127.0.0.1:9/p.png) [click](http://example.com) `y",
    "<img src=x onerror=alert(1)> **bold** _it_ $x^2$ &amp; # head",
    "line\n\n# heading\n- item",
])
def test_link_values_render_as_their_literal_text(value):
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render(f"⚠️ The link asks for model “{literal(value)}”.")
    assert "<a" not in html and "<img" not in html and "<code" not in html and "<h1" not in html
    assert "<strong" not in html and "<em" not in html and "<li" not in html
    from html import unescape
    import re

    shown = unescape(re.sub(r"<[^>]+>", "", html)).strip()
    assert shown == f"⚠️ The link asks for model “{' '.join(value.split())}”."


def test_model_management_is_for_admins_on_a_public_hub(hub):
    hub.local_only = False  # e.g. --share, or --host 0.0.0.0
    assert not hub.may_manage(visitor())
    grid, note = models_handlers.unload(hub, "alpha", visitor())
    assert note == models_handlers.REFUSED
    grid, note = list(models_handlers.load(hub, "alpha", visitor()))[-1]
    assert note == models_handlers.REFUSED and hub.manager.state("alpha").status != "ready"
    hub.admins = frozenset({"root"})
    assert hub.may_manage(visitor(username="root")) and not hub.may_manage(visitor(username="alice"))
    assert list(models_handlers.load(hub, "alpha", visitor(username="root")))[-1][1] == "**alpha** is ready."
    assert hub.manager.state("alpha").status == "ready"
    seen = {row[0]: row[3:] for row in models_handlers.refresh(hub, visitor(username="alice"))[0]}
    assert seen["alpha"][0] != "ready" and not any(seen["alpha"][1:])  # a loaded state would unmask an Arena pair
    hub.admins, hub.local_only = frozenset(), True  # a loopback-only hub without --admin: its user manages
    assert models_handlers.unload(hub, "alpha", None)[1] == "Unloaded **alpha**."


def test_failed_logins_back_off_exponentially_per_key_and_a_success_clears_them(monkeypatch):
    import demo.auth as auth

    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    throttle = LoginThrottle()
    for _ in range(LoginThrottle.FREE):
        throttle.failed("ip:a", "user:bob")
    assert throttle.wait_s("ip:a") == 0  # a few typos are free
    waits = []
    for _ in range(4):
        throttle.failed("ip:a", "user:bob")
        waits.append(throttle.wait_s("ip:a"))
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert throttle.wait_s("ip:other", "user:bob") == 8.0  # the user is throttled from any address
    assert throttle.wait_s("ip:other", "user:amy") == 0
    now[0] += 8.5
    assert throttle.wait_s("ip:a") == 0
    throttle.succeeded("ip:a", "user:bob")
    throttle.failed("ip:a")
    assert throttle.wait_s("ip:a") == 0


def test_a_server_the_bench_starts_dies_with_the_bench_even_on_sigkill(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.servers import ROOT

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from bench.servers import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        child.kill()
        raise AssertionError("the child outlived its parent")


def test_an_unterminated_quote_in_the_registry_is_reported_where_it_starts():
    from demo.registry import RegistryError

    with pytest.raises(RegistryError) as caught:
        parse_registry('models:\n  - id: "abc\n    name: x\n', "reg.yaml")
    assert str(caught.value).startswith("reg.yaml:2: not valid YAML: while scanning a quoted scalar"), caught.value

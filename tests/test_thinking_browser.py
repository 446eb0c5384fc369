"""The Thinking block in a real browser: chromium against a `serve` process whose model is the tiny scripted
Qwen3 (real Qwen3 tokenizer and template, tests/tiny.py), which thinks "Hmm" and answers "Hi"."""
from __future__ import annotations

import re

import pytest

from tests.browser import launch_chromium, send
from tests.hubserver import HubServer, tiny_entry, write_registry
from tests.tiny import make_scripted_qwen3

pytestmark = pytest.mark.slow

ANSWERS_DONE = """(count) => (document.querySelector('#chatbot').innerText.match(/tok\\/s/g) || []).length >= count"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("thinking_browser")
    registry = write_registry(root / "registry.yaml", [tiny_entry("qwen3", make_scripted_qwen3(root / "qwen3"), 32)],
                              "qwen3")
    server = HubServer(registry, root / "votes.sqlite3", root / "server.log").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


def test_thinking_shows_collapsed_above_the_answer_and_the_switch_turns_it_off(browser, server):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    page.goto(server.url)
    send(page, "#chat-input", "Hello")
    page.wait_for_function(ANSWERS_DONE, arg=1, timeout=240_000)
    chat = page.locator("#chatbot")
    block = chat.locator(".thought-group")
    assert block.count() == 1
    assert re.fullmatch(r"Thinking\s*\(\d+(\.\d+)?s\)", block.locator(".title").inner_text().strip())
    shown = chat.inner_text()
    assert "Hmm" not in shown, "the thinking is collapsed once the answer starts"
    assert shown.index("Thinking") < shown.index("Hi\n") < shown.index("qwen3 · 5 tokens")
    block.locator(".title").click()
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Hmm')")

    switch = page.locator("#chat-thinking input[type=checkbox]")
    assert switch.is_enabled() and switch.is_checked()
    switch.uncheck()
    send(page, "#chat-input", "Hello again")
    page.wait_for_function(ANSWERS_DONE, arg=2, timeout=240_000)
    assert chat.locator(".thought-group").count() == 1, "with thinking off the reply has no block"
    assert "get_weather" in chat.inner_text()  # the scripted reply after an empty <think></think>

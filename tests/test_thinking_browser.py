"""The Thinking block, the Thinking switch and tool calls in a real browser: chromium against a `serve` process
whose models are the tiny scripted Qwen3 (real Qwen3 tokenizer and template, tests/tiny.py), twice: with
thinking on it thinks "Hmm" and answers "Hi"; with thinking off it calls get_weather({"q": 7})."""
from __future__ import annotations

import re
import time

import pytest

from tests.browser import context_page, launch_chromium, send
from tests.hubserver import HubServer, tiny_entry, write_registry
from tests.tiny import make_scripted_qwen3

pytestmark = pytest.mark.slow

ANSWERS_DONE = """(count) => (document.querySelector('#chatbot').innerText.match(/tok\\/s/g) || []).length >= count"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("thinking_browser")
    folder = make_scripted_qwen3(root / "qwen3")
    entries = [tiny_entry("qwen3", folder, 32), tiny_entry("qwen3-twin", folder, 32)]  # Compare's pair
    registry = write_registry(root / "registry.yaml", entries, "qwen3")
    server = HubServer(registry, root / "votes.sqlite3", root / "server.log").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser):
    yield from context_page(browser, 1280, 900, 30_000)


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
    # The block closes in an effect after the update that marks it done: on a busy machine the page can show
    # that update a moment before the block closes.
    page.wait_for_function("() => !document.querySelector('#chatbot').innerText.includes('Hmm')", timeout=5_000)
    shown = chat.inner_text()
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


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_compare_with_thinking_off_sends_enable_thinking_false(page, server):
    page.goto(server.url + "?compare=qwen3,qwen3-twin")
    # the chosen pair sets the switch (on: both templates have enable_thinking); turn it off after that
    page.wait_for_function("() => document.querySelector('#compare-thinking')?.innerText.includes('Passes each')")
    page.locator("#compare-thinking input[type=checkbox]").uncheck()
    send(page, "#compare-input", "Hello")
    page.wait_for_function("() => [0, 1].every(k => { const line = document.querySelector(`#compare-stats-${k}`)?"
                           ".innerText || ''; return line.includes('tok/s') && !line.includes('streaming'); })",
                           timeout=120_000)
    for k in (0, 1):  # the reply that follows "<think>\n\n</think>\n\n" in the prompt: a call, no Thinking block
        assert page.locator(f"#compare-chat-{k} .thought-group").count() == 0
        assert "get_weather" in text_of(page, f"#compare-chat-{k}")
        assert "does not apply" not in text_of(page, f"#compare-stats-{k}")
    page.locator("#compare-prompt").get_by_text("Prompt", exact=True).click()
    page.wait_for_function("() => document.querySelector('#compare-prompt-view')?.innerText.includes('</think>')")
    prompt = text_of(page, "#compare-prompt-view .prompt-text").rstrip()
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>")


TOOLS = ('[{"type": "function", "function": {"name": "get_weather", "description": "The weather", '
         '"parameters": {"type": "object", "properties": {"q": {"type": "integer"}}}}}]')


def fill_until_status(page, box, text: str, status: str, timeout_s: float = 30) -> None:
    """Type into the Tools box until its status line says `status`: the page's load-time update of the
    box (for the model it opens on) re-draws it, and a value typed just before may not reach the server."""
    check = "(text) => document.querySelector('#chat-tools-status')?.innerText.includes(text)"
    deadline = time.monotonic() + timeout_s
    while True:
        box.fill(text)
        try:
            page.wait_for_function(check, arg=status, timeout=3000)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


def test_a_tool_call_shows_as_a_collapsible_block_and_its_result_goes_back(page, server):
    page.goto(server.url)
    page.locator("#chat-input textarea").wait_for()
    page.locator("#chat-tools-accordion").get_by_text("Tools", exact=True).click()
    tools = page.locator("#chat-tools textarea")
    fill_until_status(page, tools, "[{", "not valid JSON")
    fill_until_status(page, tools, TOOLS, "1 tool: get_weather")
    thinking = page.locator("#chat-thinking input[type=checkbox]")
    thinking.uncheck()  # the scripted model calls when it does not think
    assert not thinking.is_checked()
    send(page, "#chat-input", "Weather?")
    page.wait_for_function(ANSWERS_DONE, arg=1, timeout=120_000)
    chat = page.locator("#chatbot")
    call = chat.locator(".thought-group")
    assert call.count() == 1 and call.locator(".title").inner_text().strip() == "🛠️ Tool call: get_weather"
    assert '"q": 7' not in chat.inner_text(), "the call's arguments are collapsed"
    call.locator(".title").click()
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('\"q\": 7')")
    assert "send each result in Tools" in text_of(page, "#chat-status")
    page.locator("#chat-tool-result textarea").fill("sunny")
    page.locator("#chat-tool-send").click()
    page.wait_for_function(ANSWERS_DONE, arg=2, timeout=120_000)  # the model's turn after the result
    assert "Result of get_weather" in chat.inner_text() and "sunny" in chat.inner_text()
    page.locator("#chat-prompt").get_by_text("Prompt", exact=True).click()
    page.wait_for_function("() => document.querySelector('#chat-prompt-view')?.innerText.includes('sunny')")
    assert "<tool_response>\nsunny\n</tool_response>" in text_of(page, "#chat-prompt-view .prompt-text")

"""The chat page in a real browser: Debian's chromium, headless, driven by Playwright's Python package.

The server is the real `python -m demo serve` process of tests/app_server.py. Each test opens its own
page (its own Gradio session). `HUB_SCREENSHOTS=docs pytest tests/test_browser.py` refreshes the
README's docs/chat.png; otherwise the screenshot goes to the test's temp folder.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from gradio_client import Client
from playwright.sync_api import Page

from tests.app_server import BROKEN, DEFAULT, GONE, MISSING_GGUF, TINY
from tests.browser import launch_chromium
from tests.browser import send as send_to

pytestmark = pytest.mark.slow

REPLY_TIMEOUT_MS = 240_000  # a bound against hangs (a first reply loads its model), not a speed check
STOPPED_TIMEOUT_MS = 60_000  # after Stop the engine ends within a step or two; this only bounds a hang
STATES = {"unavailable", "not loaded", "loading", "ready", "error"}

# Records every text the last reply shows, from inside the page, so no streamed state is missed
# between two polls from the test.
WATCH_REPLIES = """() => {
  window.__replies = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText;
    const seen = window.__replies;
    if (seen[seen.length - 1] !== text) seen.push(text);
  }).observe(chat, {childList: true, subtree: true, characterData: true});
}"""
REPLY_FINISHED = """(count) => {
  const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
  return bots.length >= count && / tok\\/s · /.test(bots[count - 1].innerText);
}"""


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser, hub_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(hub_server.url)
    page.locator("#chat-input textarea").wait_for()
    page.evaluate(WATCH_REPLIES)
    yield page
    context.close()


def send(page: Page, text: str) -> None:
    send_to(page, "#chat-input", text)


def wait_for_reply(page: Page, count: int, timeout_ms: float = REPLY_TIMEOUT_MS) -> str:
    """Wait until reply number `count` (1-based) shows its stats line; return its text."""
    page.wait_for_function(REPLY_FINISHED, arg=count, timeout=timeout_ms)
    return replies(page)[count - 1]


def replies(page: Page) -> list[str]:
    return page.locator("#chatbot [data-testid='bot']").all_inner_texts()


def split(shown: str) -> tuple[str, str]:
    """A reply as shown -> (its text, the line under it: "model · stats")."""
    text, _, line = shown.strip().rpartition("\n\n")
    return text, line


def streamed_texts(page: Page) -> list[str]:
    """The distinct texts the last reply showed while it streamed (not the placeholder)."""
    texts = [split(t)[0] for t in page.evaluate("window.__replies")]
    return [t for t in dict.fromkeys(texts) if t and t != "…"]


def choose(page: Page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    assert page.locator(f"{dropdown} input").input_value() == option


def test_typed_message_streams_its_answer_and_ends_with_paris(page, tmp_path):
    send(page, "What is the capital of France?")
    text, line = split(wait_for_reply(page, 1))
    assert "Paris" in text
    assert re.fullmatch(rf"{DEFAULT} · \d+ tokens · [\d.]+ tok/s · first token \d+ ms", line), line
    pieces = streamed_texts(page)
    partial = [p for p in pieces if p != text]
    assert len(set(partial)) >= 2, f"saw no streaming, only {pieces}"
    assert all(text.startswith(p) for p in partial), pieces
    assert page.locator("#chat-input textarea").input_value() == ""

    shot = Path(os.environ.get("HUB_SCREENSHOTS") or tmp_path) / "chat.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.locator("#chat-input textarea").blur()
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_switching_the_model_keeps_the_conversation_and_marks_the_next_reply(page):
    send(page, "Hi!")
    first = wait_for_reply(page, 1)
    assert split(first)[1].startswith(f"{DEFAULT} · ")
    choose(page, "#chat-model", f"Tiny random Llama ({TINY})")
    send(page, "Hi again!")
    second = wait_for_reply(page, 2)
    assert split(second)[1].startswith(f"{TINY} · ")
    assert replies(page)[0] == first, "the first reply and its model line are kept"
    users = page.locator("#chatbot [data-testid='user']").all_inner_texts()
    assert [u.strip() for u in users] == ["Hi!", "Hi again!"]


def test_stop_ends_a_long_reply(page):
    page.get_by_text("System prompt and sampling").click()
    budget = page.get_by_label("number input for max_new_tokens")
    budget.fill("400")
    budget.press("Enter")
    send(page, "Write a long story about a dragon who learns to bake bread.")
    deadline = time.monotonic() + REPLY_TIMEOUT_MS / 1000
    while len(streamed_texts(page)) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert len(streamed_texts(page)) >= 2, "the reply did not start streaming"
    page.locator("#chat-stop").click()
    text, line = split(wait_for_reply(page, 1, STOPPED_TIMEOUT_MS))
    assert line.startswith(f"{DEFAULT} · ") and line.endswith(" · cancelled"), line
    tokens = int(re.search(r"(\d+) tokens", line).group(1))
    assert tokens < 400
    assert text.startswith(streamed_texts(page)[1])


def model_rows(page: Page) -> dict[str, list[str]]:
    rows = {}
    for row in page.locator("#models-table [role='row']").all():
        cells = [c.strip() for c in row.locator("[role='gridcell']").all_inner_texts()]
        if cells:
            rows[cells[0]] = cells
    return rows


def wait_for_state(page: Page, model_id: str, state: str, timeout_s: float = 60) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = model_rows(page)
        if rows.get(model_id, [None] * 4)[3] == state or time.monotonic() > deadline:
            return rows
        page.wait_for_timeout(250)


def test_models_tab_lists_every_entry_with_its_state(page, hub_server):
    page.get_by_role("tab", name="Models").click()
    page.locator("#models-table [role='gridcell']").first.wait_for()
    # The table is first drawn in the visitor's view ("available"); the page-load event then shows this
    # loopback user, who manages models, the manager's states.
    deadline = time.monotonic() + 30
    rows = model_rows(page)
    while {row[3] for row in rows.values()} - STATES and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        rows = model_rows(page)
    assert set(rows) == {DEFAULT, TINY, GONE, BROKEN}
    assert {row[3] for row in rows.values()} <= STATES
    # The page shows what the server's manager says (the table refreshes every 2 s).
    client = Client(hub_server.url, verbose=False)
    deadline = time.monotonic() + 30
    while True:
        shown = {i: r[3] for i, r in model_rows(page).items()}
        told = {r[0]: r[3] for r in client.predict(api_name="/model_states")[0]["data"]}
        if shown == told or time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)
    assert shown == told
    assert rows[GONE][3] == "unavailable"  # also after a test has tried to load it
    assert MISSING_GGUF in rows[GONE][5]

    choose(page, "#models-choice", f"Tiny random Llama ({TINY})")
    page.locator("#models-unload").click()
    assert wait_for_state(page, TINY, "not loaded")[TINY][3] == "not loaded"
    page.locator("#models-load").click()
    assert wait_for_state(page, TINY, "ready")[TINY][3] == "ready"
    assert f"{TINY} is ready" in page.locator("#models-action").inner_text()
    assert "MB of a" in page.locator("#models-info").inner_text()


def test_a_links_model_value_shows_as_its_literal_text(browser, hub_server):
    """?model= with Markdown in it: the page shows the text; no link or image appears (nor is fetched)."""
    from urllib.parse import quote

    value = "x` ![pixel](http://127.0.0.1:9/p.png) [click](http://127.0.0.1:9/) <b>bold</b> `y"
    context = browser.new_context()
    page = context.new_page()
    fetched = []
    page.on("request", lambda r: fetched.append(r.url) if ":9/" in r.url else None)
    try:
        page.goto(f"{hub_server.url}/?model={quote(value)}")
        status = page.locator("#chat-status")
        status.get_by_text("which this hub does not have").wait_for(timeout=60_000)
        assert value in status.inner_text()
        assert status.locator("a, img, b, code").count() == 0
        assert not fetched
    finally:
        context.close()

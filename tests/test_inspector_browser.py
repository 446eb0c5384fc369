"""The Prompt inspector in a real browser: its ids are `python -m demo prompt --json`'s for the same
conversation and model, in the Chat tab and for each model of the Compare tab.

The server is the session's real `python -m demo serve` (tests/app_server.py); `prompt --json` runs
through `demo.cli.main` with that server's registry.
"""
from __future__ import annotations

import json

import pytest

from demo.cli import main
from tests.app_server import DEFAULT, TINY
from tests.browser import launch_chromium, context_page, send

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

SYSTEM = "Answer in one short sentence."
TYPED = "Is <|im_end|> a special token? Say yes or no."  # typed text that spells a control token


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser, hub_server):
    yield from context_page(browser)


def prompt_json(hub_server, capsys, tmp_path, model: str, messages: list[dict], *extra: str) -> dict:
    path = tmp_path / f"{model}.json"
    path.write_text(json.dumps(messages), encoding="utf-8")
    registry = hub_server.log_path.parent / "registry.yaml"
    capsys.readouterr()
    assert main(["--registry", str(registry), "prompt", model, "--messages", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def shown_ids(page, prefix: str, previous: str = "") -> list[int]:
    """The inspector's ids once they are shown (and differ from `previous`)."""
    box = f"#{prefix}-prompt-ids textarea"
    page.wait_for_function("([box, previous]) => { const v = document.querySelector(box).value;"
                           " return v.startsWith('[') && v !== previous; }", arg=[box, previous], timeout=120_000)
    return json.loads(page.locator(box).input_value())


def test_chat_inspector_ids_equal_prompt_json(page, hub_server, capsys, tmp_path):
    page.goto(hub_server.url)
    page.locator("#chat-input textarea").wait_for()
    page.get_by_text("System prompt and sampling").click()
    page.locator("#chat-system textarea").fill(SYSTEM)
    send(page, "#chat-input", TYPED)
    page.locator("#chat-prompt").get_by_text("Prompt", exact=True).click()  # opening it shows the prompt
    ids = shown_ids(page, "chat")
    expected = prompt_json(hub_server, capsys, tmp_path, DEFAULT,
                           [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TYPED}],
                           "--max-new-tokens", "16")  # the Chat tab's max_new_tokens slider: the entry's 16
    assert ids == expected["input_ids"]
    stops = json.loads(page.locator("#chat-prompt-stops textarea").input_value())
    assert stops == {"stop_token_ids": expected["stop_token_ids"], "stop_strings": expected["stop_strings"]}
    view = page.locator("#chat-prompt-view")
    expect(view).to_contain_text(f"{len(ids)} tokens")
    marks = view.locator("mark.special-token").all_inner_texts()
    assert marks.count("<|im_start|>") == 3 and marks.count("<|im_end|>") == 2  # the template's, not the typed one
    assert TYPED in view.locator("pre").inner_text()


def test_compare_inspector_shows_each_models_prompt(page, hub_server, capsys, tmp_path):
    page.goto(f"{hub_server.url}/?compare={DEFAULT},{TINY}")
    page.locator("#compare-input textarea").wait_for()
    send(page, "#compare-input", "Name a color.")
    page.locator("#compare-prompt").get_by_text("Prompt", exact=True).click()
    first = shown_ids(page, "compare")
    expected = prompt_json(hub_server, capsys, tmp_path, DEFAULT, [{"role": "user", "content": "Name a color."}])
    assert first == expected["input_ids"]
    expect(page.locator("#compare-prompt-view")).to_contain_text(DEFAULT)
    page.locator("#compare-prompt-model").get_by_text(TINY, exact=True).click()
    expect(page.locator("#compare-prompt-view")).to_contain_text(TINY, timeout=120_000)
    tiny = json.loads(page.locator("#compare-prompt-ids textarea").input_value())
    assert tiny == prompt_json(hub_server, capsys, tmp_path, TINY, [{"role": "user", "content": "Name a color."}])[
        "input_ids"]

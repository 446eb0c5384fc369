"""A fresh clone in a real browser: the shipped registry's two presets fill Compare and the Arena; a
one-model registry explains itself. Set HUB_SCREENSHOTS=docs to also write the README's first screenshot."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import launch_chromium, send
from tests.hubserver import ROOT, HubServer, smollm_entry, write_registry
from tests.test_compare_arena_browser import SHOTS, finished, open_page, panes_shown, watch_panes

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

PRESETS = ["smollm2-135m-precise", "smollm2-135m-creative"]


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


def new_page(browser, width=1280):
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(90_000)
    return context.new_page()


def test_fresh_clone_compares_and_plays_the_two_presets(browser, tmp_path):
    hub = HubServer(ROOT / "model_registry.yaml", tmp_path / "votes.sqlite3", tmp_path / "server.log",
                    preload=True).start(timeout_s=420)
    try:
        page = new_page(browser)
        open_page(page, hub)
        page.get_by_role("tab", name="Compare").click()
        for preset in PRESETS:  # the page's load handler picks them, a moment after the page shows
            expect(page.locator("#compare-models")).to_contain_text(f"({preset})")
        panes_shown(page, [True, True, False, False])
        for k, preset in enumerate(PRESETS):
            expect(page.locator(f"#compare-chat-{k} label").first).to_have_text(re.compile(rf"^\s*{preset}\s*$"))
        send(page, "#compare-input", "Describe the sea in one sentence.")
        both_streamed = lambda panes: all(p["text"] and p["text"] != "…" for p in panes)  # noqa: E731
        done = (lambda panes: all(finished(p) for p in panes)) if SHOTS else both_streamed
        seen = watch_panes(page, 2, done, timeout_s=240)
        assert any(both_streamed(obs) and all("streaming" in p["stats"] for p in obs) for obs in seen)
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / "first-run.png"), full_page=True)

        page.get_by_role("tab", name="Arena").click()
        send(page, "#arena-input", "Hello! Who are you?")
        page.wait_for_function("() => ['a', 'b'].every(s => { const bots = document.querySelectorAll("
                               "`#arena-chat-${s} [data-testid=bot]`); const text = bots.length ? "
                               "bots[bots.length - 1].innerText.trim() : ''; return text && text !== '…'; })")
        page.click("#arena-stop")  # what both wrote so far can be voted on
        page.wait_for_selector("#arena-status :text('Both answers are in')", timeout=240_000)
        page.click("#arena-vote-tie")
        page.wait_for_selector("#arena-status :text('Vote #1 saved')")
        names = re.search(r"Model A was (\S+), Model B was (\S+)\.", page.locator("#arena-result").inner_text())
        assert sorted(names.groups()) == sorted(PRESETS)
    finally:
        hub.kill()


def test_one_model_registry_explains_in_the_arena(browser, tmp_path):
    registry = write_registry(tmp_path / "registry.yaml", [smollm_entry(max_new_tokens=8)], default="smollm2-135m")
    hub = HubServer(registry, tmp_path / "votes.sqlite3", tmp_path / "server.log").start(timeout_s=300)
    try:
        page = new_page(browser)
        open_page(page, hub)
        page.get_by_role("tab", name="Arena").click()
        status = page.locator("#arena-status")
        expect(status).to_contain_text("The Arena needs at least two available models; this hub has 1 "
                                       "(smollm2-135m). To add one, give registry.yaml another entry")
        area = page.locator("#arena-input textarea")
        area.fill("Hello?")
        area.press("Enter")
        expect(status).to_contain_text("Nothing was sent.")
        assert area.input_value() == "Hello?"
        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-status")).to_contain_text("Compare needs at least two available models")
    finally:
        hub.kill()

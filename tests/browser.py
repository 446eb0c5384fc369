"""What the browser test modules share: Debian's chromium under Playwright, and typing a message."""
from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch_chromium():
    """A generator fixture body: a headless chromium for one module, closed after it."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `bash scripts/setup.sh test` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def context_page(browser, width: int = 1400, height: int = 1000, timeout_ms: int = 60_000):
    """A generator fixture body: a page in a browser context of its own, closed after the test."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(timeout_ms)
    yield context.new_page()
    context.close()


def send(page, box: str, text: str) -> None:
    """Type into the `box` element's textarea and press Enter; once the app takes the message it empties
    the box. On a loaded machine the page can show the box before Gradio has bound its events, and that
    first Enter is lost: press again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    area = page.locator(f"{box} textarea")
    area.fill(text)
    for _ in range(3):
        area.press("Enter")
        try:
            page.wait_for_function("box => document.querySelector(`${box} textarea`).value === ''", arg=box,
                                   timeout=15_000)
            return
        except PlaywrightTimeoutError:
            continue
    raise AssertionError(f"the page never took the message {text!r}")

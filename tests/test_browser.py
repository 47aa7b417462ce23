"""The page in a real browser: Debian's chromium driven by Playwright (the python package only; no
browser download), over a real uvicorn server on the offline index. Skips, saying why, when
playwright or chromium is missing (.ci/run installs chromium when apt is there)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def _chromium() -> str | None:
    chosen = os.environ.get("RETRIEVER_TEST_CHROMIUM")
    if chosen:
        return chosen
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


@pytest.fixture
def browser_page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright python package is not installed (pip install -e '.[dev]')")
    pytest.importorskip("fastapi")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium: apt-get install -y chromium (or set RETRIEVER_TEST_CHROMIUM)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as exc:  # noqa: BLE001  (a chromium that cannot start here is an environment gap)
            pytest.skip(f"chromium at {executable} does not start: {str(exc).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.set_default_timeout(15_000)
        yield page
        browser.close()


def test_search_click_and_more_like_this_in_a_browser(browser_page, offline_index, offline_encoder, tmp_path):
    from retriever.serve.service import Service as Engine
    from retriever.serve.server import Server

    server = Server(Engine(offline_index, encoder=offline_encoder), host="127.0.0.1", port=0)
    info = server.start()
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{info.url}/")
        page.wait_for_selector("#status:has-text('photos in index')")
        assert page.locator("#ask-form").is_hidden()  # no VLM: no ask box
        page.fill("#q", "a cat")
        page.press("#q", "Enter")
        first = page.locator("#results .card").first
        first.wait_for()
        assert first.locator(".name").inner_text() == "chelsea.png"
        assert float(first.locator(".score").inner_text()) > 0
        # the thumbnail really loaded
        page.wait_for_function("() => { const i = document.querySelector('#results .card img');"
                               " return i && i.complete && i.naturalWidth > 0; }")
        first.click()
        page.wait_for_selector("#viewer[open]")
        assert page.locator("#viewer-title").inner_text() == "chelsea.png"
        page.keyboard.press("ArrowRight")  # the next result, then back
        assert page.locator("#viewer-title").inner_text() != "chelsea.png"
        page.keyboard.press("ArrowLeft")
        assert page.locator("#viewer-title").inner_text() == "chelsea.png"
        page.click("#more")
        page.wait_for_selector("#status:has-text('like chelsea.png')")
        similar = page.locator("#results .card .name").all_inner_texts()
        assert len(similar) == 14 and "chelsea.png" not in similar
        assert page.locator("#viewer[open]").count() == 0
        shot = tmp_path / "browser.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        assert not errors, errors
    finally:
        server.stop()

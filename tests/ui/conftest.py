"""Browser fixtures: the real app on a real HTTP server, driven by Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
#: docs/screenshots is refreshed on request only (docs/review.md, "Pages"):
#: ``TANDEM_SCREENSHOTS=1 pytest -m browser tests/ui``. Without it every page is still
#: rendered to an image and checked, and the checkout stays clean.
SCREENSHOTS_ENV = "TANDEM_SCREENSHOTS"
PNG = b"\x89PNG\r\n\x1a\n"


def _ensure_chromium() -> None:
    """Install Debian's chromium when missing (never Playwright's own browser download)."""
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False)
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def live_server(committed_db: Any, flask_app: Any) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def page_for(browser: Any, live_server: str) -> Iterator[Any]:
    """New browser contexts (separate cookie jars) signed in as the given user."""
    contexts: list[Any] = []

    def _open(
        email: str, password: str, width: int = 1280, height: int = 800, **options: Any
    ) -> Any:
        """``options`` go to the browser context (``has_touch``, ``is_mobile`` for a phone)."""
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(live_server + "/login")
        page.fill("#email", email)
        page.fill("#password", password)
        page.keyboard.press("Enter")
        page.wait_for_url(live_server + "/")
        return page

    yield _open
    for context in contexts:
        context.close()


def shot(page: Any, name: str) -> None:
    """Render the whole page to a PNG and check it (an image of a page that shows text);
    write it to docs/screenshots/<name>.png only when TANDEM_SCREENSHOTS=1."""
    image = page.screenshot(full_page=True)
    assert image[:8] == PNG, name
    assert page.locator("body").inner_text().strip(), f"{name}: the page shows nothing"
    if os.environ.get(SCREENSHOTS_ENV) == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"{name}.png").write_bytes(image)

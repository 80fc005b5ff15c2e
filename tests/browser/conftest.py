"""Browser tests: Debian's chromium (/usr/bin/chromium, installed by scripts/browser-deps.sh)
driven by Playwright's async API as a system browser; Playwright's own browser download is
never used.

Fixtures:

- `browser`: one headless chromium for the whole session (launching costs ~1 s).
- `browser_page`: opens pages in fresh browser contexts; `page = await browser_page(url)`.
  The test fails on any console error, uncaught page error, failed request, HTTP error
  response, or request (or WebSocket) to a host outside the loopback range; such requests
  are aborted before they leave the machine. Every page opened is screenshotted at the end
  of the test under `.test-output/screenshots/` (CREWGRAPH_TEST_OUTPUT moves the root).

Without chromium or Playwright the tests skip with the reason; under CI=true they fail.

The API server (`server_url`) runs on the session's event loop, so these fixtures and the
tests using them are async: a blocking Playwright call would stall the server it talks to.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Page,
        Request,
        Response,
        Route,
        WebSocket,
    )

CHROMIUM = Path(os.environ.get("CREWGRAPH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in CI; the page is our own, served from loopback
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Chromium's own calls home (updates, sync, safe browsing lists) would be external
    # requests the tests cannot see; none may leave the machine.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Long enough for GraphiQL's 3.5 MB bundle on a busy 2-core machine, short enough that a
# hung page fails within the test's time.
DEFAULT_TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(f"browser tests skipped: {reason}")


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this machine (127.0.0.0/8, ::1, localhost); `data:` and
    `blob:` URLs never touch the network and count as local."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def output_dir(config: pytest.Config) -> Path:
    root = os.environ.get("CREWGRAPH_TEST_OUTPUT")
    return (Path(root) if root else config.rootpath / ".test-output") / "screenshots"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (run scripts/browser-deps.sh or `make browser-up`)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed (make install)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield b
        finally:
            await b.close()


class BrowserPages:
    """Opens pages and records everything that makes a page's run a failure."""

    def __init__(self, browser: Browser, shots: Path, test_name: str) -> None:
        self.browser = browser
        self.shots = shots
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:120]
        self.problems: list[str] = []
        self.pages: list[Page] = []
        self.contexts: list[BrowserContext] = []
        self._allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        """Don't count problems matching `pattern` (regex, searched): for a test that
        provokes an error on purpose, e.g. `allow(r"status 401 .*/graphql")`."""
        self._allowed.append(re.compile(pattern))

    def _problem(self, text: str) -> None:
        if not any(p.search(text) for p in self._allowed):
            self.problems.append(text)

    async def __call__(self, url: str, *, wait_until: str = "load", **context_options: Any) -> Page:
        """A new page in its own context (no shared storage), at `url`.
        `context_options` go to `browser.new_context` (e.g. `viewport`)."""
        options: dict[str, Any] = {
            "viewport": {"width": 1280, "height": 800},
            "service_workers": "block",
            **context_options,
        }
        context = await self.browser.new_context(**options)
        self.contexts.append(context)
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        await context.route("**/*", self._route)
        page = await context.new_page()
        self.pages.append(page)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self._problem(f"page error: {exc.name}: {exc.message}"))
        page.on("requestfailed", self._on_request_failed)
        page.on("response", self._on_response)
        page.on("websocket", self._on_websocket)
        await page.goto(url, wait_until=wait_until)  # type: ignore[arg-type]
        return page

    async def _route(self, route: Route, request: Request) -> None:
        if is_loopback_url(request.url):
            await route.continue_()
            return
        self._problem(f"external request blocked: {request.method} {request.url}")
        await route.abort("blockedbyclient")

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "")
            self._problem(f"console error: {message.text} ({where})")

    def _on_request_failed(self, request: Request) -> None:
        if not is_loopback_url(request.url):
            return  # already reported as blocked
        self._problem(f"request failed: {request.method} {request.url}: {request.failure}")

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            sent = response.request.post_data or ""
            self._problem(
                f"HTTP status {response.status} for {response.request.method} {response.url}"
                + (f" (body sent: {sent[:300]})" if sent else "")
            )

    def _on_websocket(self, ws: WebSocket) -> None:
        if not is_loopback_url(ws.url.replace("ws", "http", 1)):
            self._problem(f"external WebSocket: {ws.url}")

    def assert_clean(self) -> None:
        """Fail now if anything went wrong so far (the fixture checks again at the end)."""
        if self.problems:
            found, self.problems = self.problems, []
            pytest.fail("the browser saw problems:\n  " + "\n  ".join(found), pytrace=False)

    async def close(self) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        for i, page in enumerate(self.pages):
            if page.is_closed():
                continue
            suffix = f"-{i}" if len(self.pages) > 1 else ""
            try:
                await page.screenshot(path=str(self.shots / f"{self.test_name}{suffix}.png"))
            except Exception as exc:  # a crashed page still lets the others be saved
                self._problem(f"screenshot failed: {exc}")
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def browser_page(
    browser: Browser, request: pytest.FixtureRequest
) -> AsyncIterator[BrowserPages]:
    pages = BrowserPages(browser, output_dir(request.config), request.node.nodeid)
    try:
        yield pages
    finally:
        await pages.close()
    pages.assert_clean()

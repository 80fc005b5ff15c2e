"""The browser fixture itself: what it must turn into a failing test, it does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import BrowserPages, is_loopback_url

try:
    from playwright.async_api import Browser
except ImportError:  # the fixture skips (or fails in CI) with the reason
    Browser = object  # type: ignore[assignment,misc]


def test_loopback_urls() -> None:
    for url in (
        "http://127.0.0.1:8000/graphql",
        "ws://127.0.0.1:8000/graphql",
        "http://127.8.9.10/",
        "http://localhost:3000/x",
        "http://[::1]:8000/",
        "data:text/html,hi",
        "blob:http://127.0.0.1/abc",
    ):
        assert is_loopback_url(url), url
    for url in (
        "https://unpkg.com/graphiql",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://127.0.0.1.example.com/",
        "http://localhost.example.com/",
        "http://[::ffff:8.8.8.8]/",
        "https://cdn.invalid/react.js",
    ):
        assert not is_loopback_url(url), url


async def test_problems_are_caught_and_external_requests_never_leave(
    browser: Browser, tmp_path: Path
) -> None:
    pages = BrowserPages(browser, tmp_path, "fixture-self-test")
    try:
        page = await pages(
            "data:text/html,<title>t</title><img src='https://cdn.invalid/pixel.png'>"
        )
        await page.evaluate("console.error('boom')")
        await page.evaluate("setTimeout(() => { throw new Error('uncaught') }, 0)")
        status = await page.evaluate(
            "fetch('https://cdn.invalid/graphiql.js').then(() => 'loaded', () => 'refused')"
        )
        assert status == "refused"
        await page.wait_for_timeout(100)
        found = "\n".join(pages.problems)
        assert "external request blocked: GET https://cdn.invalid/pixel.png" in found
        assert "external request blocked: GET https://cdn.invalid/graphiql.js" in found
        assert "console error: boom" in found
        assert "page error: Error: uncaught" in found

        with pytest.raises(pytest.fail.Exception, match="the browser saw problems"):
            pages.assert_clean()
        assert pages.problems == []  # reported once

        pages.allow(r"console error: expected")
        await page.evaluate("console.error('expected by the test')")
        pages.assert_clean()
    finally:
        await pages.close()
    assert (tmp_path / "fixture-self-test.png").stat().st_size > 0

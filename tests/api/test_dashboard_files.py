"""The dashboard's files over real HTTP: the page and its modules are served as they are,
under a same-origin-only policy, nothing outside server/static/dashboard is reachable
through it, and no file names another host (the browser test, tests/browser/
test_dashboard.py, proves the page itself works)."""

from __future__ import annotations

import re

import pytest

from server.dashboard import DASHBOARD
from tests.support.client import GQL


async def test_the_page_and_its_modules_are_served_with_a_strict_policy(gql: GQL) -> None:
    for path in ("/dashboard", "/dashboard/"):
        page = await gql.http.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/dashboard/app.js">' in page.text
        csp = page.headers["content-security-policy"]
        for directive in (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ):
            assert directive in csp, (directive, csp)
        assert "unsafe" not in csp and "data:" not in csp and "http" not in csp
        assert page.headers["x-frame-options"] == "DENY"

    for name, kind in (
        ("app.js", "javascript"),
        ("api.js", "javascript"),
        ("graph.js", "javascript"),
        ("graphql-ws.js", "javascript"),
        ("dashboard.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        resp = await gql.http.get(f"/dashboard/{name}")
        assert resp.status_code == 200, name
        assert kind in resp.headers["content-type"], (name, resp.headers["content-type"])
        assert resp.headers["x-content-type-options"] == "nosniff"

    # graphql-ws comes from the locked npm package's copy on this server.
    shim = (await gql.http.get("/dashboard/graphql-ws.js")).text
    target = re.search(r'from "(/static/vendor/[^"]+)"', shim)
    assert target is not None, shim
    assert (await gql.http.get(target.group(1))).status_code == 200


async def test_nothing_outside_the_dashboard_directory_is_reachable(gql: GQL) -> None:
    for path in (
        "/dashboard/../app.py",
        "/dashboard/..%2fapp.py",
        "/dashboard/%2e%2e/dashboard.py",
        "/dashboard/missing.js",
        "/dashboard/.hidden",
    ):
        resp = await gql.http.get(path)
        assert resp.status_code == 404, (path, resp.status_code)
        assert "import" not in resp.text


def test_no_dashboard_file_names_another_host() -> None:
    """Everything the page loads is same-origin: no CDN, no absolute URL, no protocol-
    relative one (`//host/...`)."""
    external = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.I)
    for path in sorted(DASHBOARD.iterdir()):
        text = path.read_text()
        if path.suffix == ".svg":  # the SVG namespace URI is a name, not a request
            text = text.replace("http://www.w3.org/2000/svg", "")
        if path.suffix == ".js":
            text = text.replace('"http://www.w3.org/2000/svg"', "")
        assert not external.findall(text), (path.name, external.findall(text))


async def test_without_the_vendored_client_the_page_says_how_to_install_it(
    gql: GQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.dashboard.vendor_installed", lambda: False)
    page = await gql.http.get("/dashboard")
    assert page.status_code == 200
    assert "make install" in page.text and "app.js" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]

"""GraphiQL at /graphql in a real browser: every file from this server, a query over HTTP
and a subscription over the same-origin WebSocket (graphql-transport-ws), both carrying the
token typed into the Headers tab. The `browser_page` fixture fails a test on any console
error, failed request or request leaving the loopback range."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.browser.conftest import BrowserPages
from tests.conftest import register
from tests.support.client import GQL

PLACEHOLDER = "<access token from register or login>"

_EDITOR = {
    "query": ".graphiql-query-editor .CodeMirror",
    "headers": ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror",
    "response": ".graphiql-response .CodeMirror",
}


async def _editor_text(page: Any, which: str) -> str:
    text: str = await page.eval_on_selector(_EDITOR[which], "el => el.CodeMirror.getValue()")
    return text


async def _set_editor(page: Any, which: str, text: str) -> None:
    # CodeMirror 5 keeps its instance on the wrapper; setValue fires GraphiQL's onChange as
    # typing would.
    await page.eval_on_selector(_EDITOR[which], "(el, t) => el.CodeMirror.setValue(t)", text)


async def _open_graphiql(browser_page: BrowserPages, server_url: str) -> Any:
    page = await browser_page(f"{server_url}/graphql")
    await page.wait_for_selector(_EDITOR["query"])
    await page.wait_for_selector(_EDITOR["headers"])
    return page


async def test_graphiql_runs_a_query_and_a_subscription_with_the_token_from_headers(
    browser_page: BrowserPages, server_url: str, gql: GQL
) -> None:
    team = await register(gql)
    page = await _open_graphiql(browser_page, server_url)
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))

    # The Headers tab shows how to send the token before anything is typed.
    shown = json.loads(await _editor_text(page, "headers"))
    assert shown == {"Authorization": f"Bearer {PLACEHOLDER}"}

    # Without a token (the placeholder is not sent) the server refuses `me` ...
    await _set_editor(page, "query", "query Me { me { email } }")
    await page.click(".graphiql-execute-button")
    await page.wait_for_function(
        "el => el.CodeMirror.getValue().includes('UNAUTHENTICATED')",
        arg=await page.query_selector(_EDITOR["response"]),
    )

    # ... and with the token pasted in, answers over HTTP.
    await _set_editor(page, "headers", json.dumps({"Authorization": f"Bearer {team.token}"}))
    await page.click(".graphiql-execute-button")
    await page.wait_for_function(
        "([el, email]) => el.CodeMirror.getValue().includes(email)",
        arg=[await page.query_selector(_EDITOR["response"]), team.email],
    )
    assert json.loads(await _editor_text(page, "response")) == {
        "data": {"me": {"email": team.email}}
    }
    assert sockets == []  # queries never open a socket

    # A subscription: same-origin WebSocket, the token in connection_init, events shown live.
    await _set_editor(page, "query", "subscription Beat { heartbeat(intervalSeconds: 0.2) }")
    async with page.expect_websocket() as ws_info:
        await page.click(".graphiql-execute-button")
    ws = await ws_info.value
    assert ws.url == server_url.replace("http", "ws", 1) + "/graphql"
    await page.wait_for_function(
        "el => el.CodeMirror.getValue().includes('heartbeat')",
        arg=await page.query_selector(_EDITOR["response"]),
    )
    first = json.loads(await _editor_text(page, "response"))["data"]["heartbeat"]
    await page.wait_for_function(
        "([el, first]) => el.CodeMirror.getValue().includes('heartbeat')"
        " && !el.CodeMirror.getValue().includes(first)",
        arg=[await page.query_selector(_EDITOR["response"]), first],
    )
    await page.click(".graphiql-execute-button")  # the run button stops a subscription


async def test_graphiql_subscription_protocol_and_credentials(
    browser_page: BrowserPages, server_url: str, gql: GQL
) -> None:
    """What goes over the socket: graphql-transport-ws, the Headers tab's token as the
    connection_init payload; a bad token is refused and shown, not a hang."""
    team = await register(gql)
    page = await _open_graphiql(browser_page, server_url)
    frames: list[str] = []

    def watch(ws: Any) -> None:
        ws.on("framesent", lambda payload: frames.append(str(payload)))

    page.on("websocket", watch)
    await _set_editor(page, "headers", json.dumps({"Authorization": f"Bearer {team.token}"}))
    await _set_editor(page, "query", "subscription { heartbeat(intervalSeconds: 0.2) }")
    async with page.expect_websocket():
        await page.click(".graphiql-execute-button")
    response = await page.query_selector(_EDITOR["response"])
    await page.wait_for_function(
        "el => el.CodeMirror.getValue().includes('heartbeat')", arg=response
    )
    await page.click(".graphiql-execute-button")
    init = json.loads(frames[0])
    assert init == {
        "type": "connection_init",
        "payload": {"Authorization": f"Bearer {team.token}"},
    }
    assert json.loads(frames[1])["type"] == "subscribe"
    offered = await page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(server_url) for u in offered), offered

    # A wrong token: the server closes the socket (4403); GraphiQL shows why.
    await _set_editor(page, "headers", json.dumps({"Authorization": "Bearer not-a-token"}))
    await page.click(".graphiql-execute-button")
    await page.wait_for_function("el => el.CodeMirror.getValue().includes('4403')", arg=response)


async def test_graphiql_explorer_lists_the_schema(
    browser_page: BrowserPages, server_url: str
) -> None:
    page = await _open_graphiql(browser_page, server_url)
    await page.click("button[aria-label='Show GraphiQL Explorer']")
    # The explorer builds from introspection and reflects the document: the default query's
    # `login` is expanded with its selected fields, the other mutations listed beside it.
    plugin = page.locator(".graphiql-plugin")
    await plugin.get_by_text("createAgent", exact=True).wait_for()
    await plugin.get_by_text("accessToken", exact=True).wait_for()


async def test_graphiql_page_policy_allows_this_origin_only(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        page = await http.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"  # no inline script, no eval, no CDN
        assert directives["connect-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "http" not in csp and "*" not in csp
        assert "unpkg" not in page.text and "https://" not in page.text

        script = await http.get("/static/vendor/graphiql/graphiql.min.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        # Nothing outside the static directories through the mounts.
        for probe in (
            "/static/vendor/../../app.py",
            "/static/vendor/..%2f..%2fapp.py",
            "/static/graphiql/../../settings.py",
            "/static/vendor/MANIFEST.json/../../graphiql.py",
        ):
            assert (await http.get(probe)).status_code == 404, probe


async def test_graphiql_page_says_how_to_install_when_assets_are_missing(
    server_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import server.graphiql as graphiql

    monkeypatch.setattr(graphiql, "VENDOR", tmp_path / "vendor")
    async with httpx.AsyncClient(base_url=server_url) as http:
        page = await http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "make install" in page.text and "<script" not in page.text

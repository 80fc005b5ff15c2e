"""The dashboard at /dashboard in a real browser (headless Chromium), against the real API
and the scripted local model: sign in, run a flow and watch its nodes and tokens live,
follow the team's executions, cancel a slow run, answer an approval, chat, and fit a
phone-sized screen. One page for the whole story; the `browser_page` fixture fails it on
any console error, failed request or request leaving the machine. Screenshots of each
step go under the test output (.test-output/screenshots/)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from runtime.litellm_client import load_litellm
from tests.browser.conftest import BrowserPages, output_dir
from tests.conftest import PASSWORD, register
from tests.support import flows as f
from tests.support.client import GQL

LIVE_MS = 20_000
TOKEN_KEY = "crewgraph.dashboard.tokens"


def _name(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:6]}"


async def _setup(gql: GQL, token: str) -> dict[str, str]:
    """Three flows: an LLM greeting with a branch, a slow streaming LLM, an approval."""
    data = await gql.ok("LlmProvidersRuntime", {"first": 100}, token=token)
    local = next(
        e["node"]["id"]
        for e in data["llmProviders"]["edges"]
        if e["node"]["name"] == "Local (scripted)"
    )
    slow_provider = {
        "name": _name("slow"),
        "provider": "openai",
        "model": "scripted-slow",  # 50 tokens, one per 200 ms
        "baseUrl": "crewgraph:local",
    }
    slow = (await gql.ok("CreateLlmProviderRuntime", {"input": slow_provider}, token=token))[
        "createLlmProvider"
    ]["id"]
    greeting = {
        "name": _name("Greeting"),
        "nodes": [
            f.input_node(name="string"),
            {
                "id": "ask",
                "kind": "LLM",
                "name": "Greeter",
                "config": {"providerId": local, "prompt": "SAY: hello dashboard {{ inputs.name }}"},
            },
            {"id": "check", "kind": "CONDITION", "config": {"expression": "inputs.name == 'Ada'"}},
            {"id": "yes", "kind": "OUTPUT"},
            {"id": "no", "kind": "OUTPUT"},
        ],
        "edges": [
            {"source": "in", "target": "ask"},
            {"source": "ask", "target": "check"},
            {"source": "check", "target": "yes", "branch": "true"},
            {"source": "check", "target": "no", "branch": "false"},
        ],
    }
    slow_flow = {
        "name": _name("Slow"),
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "ask", "kind": "LLM", "config": {"providerId": slow, "prompt": "count"}},
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "ask"}, {"source": "ask", "target": "out"}],
    }
    approval = {
        "name": _name("Publish"),
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "ask", "kind": "APPROVAL", "config": {"prompt": "Publish the report?"}},
            {"id": "yes", "kind": "OUTPUT"},
            {"id": "no", "kind": "OUTPUT"},
        ],
        "edges": [
            {"source": "in", "target": "ask"},
            {"source": "ask", "target": "yes", "branch": "true"},
            {"source": "ask", "target": "no", "branch": "false"},
        ],
    }
    out = {}
    for key, flow in (("greeting", greeting), ("slow", slow_flow), ("approval", approval)):
        created = await f.create_flow(gql, token, flow)
        out[key] = created["id"]
        out[f"{key}_name"] = flow["name"]
    return out


async def _open_flow(page: Any, name: str) -> None:
    await page.get_by_role("button", name=f"{name} (v1)").click()
    await _expect(page.locator("#flow-title")).to_have_text(name)
    await _expect(page.locator("#run-form")).to_be_visible()


class _expect:
    """Playwright's `expect` with LIVE_MS, not 5 s, as every assertion's default time
    limit: a login (argon2) or a live update takes seconds on a busy 2-core machine."""

    def __init__(self, target: Any) -> None:
        from playwright.async_api import expect

        self._assertions = expect(target)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._assertions, name)

        def call(*args: Any, **kw: Any) -> Any:
            kw.setdefault("timeout", LIVE_MS)
            return method(*args, **kw)

        return call


def _node(page: Any, node_id: str) -> Any:
    return page.locator(f'#graph g[data-node-id="{node_id}"]')


async def test_dashboard_runs_watches_cancels_approves_and_chats(
    browser_page: BrowserPages, server_url: str, gql: GQL, request: pytest.FixtureRequest
) -> None:
    shots = output_dir(request.config)
    shots.mkdir(parents=True, exist_ok=True)

    async def shot(page: Any, step: str, **kw: Any) -> None:
        await page.screenshot(path=str(shots / f"dashboard-{step}.png"), **kw)

    # The page and its files come from this origin only, under a strict policy.
    page_resp = await gql.http.get("/dashboard")
    assert page_resp.status_code == 200
    csp = page_resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "unsafe" not in csp

    team = await register(gql)
    ids = await _setup(gql, team.token)
    # The first model call of a session waits for LiteLLM's import (instant when the LLM
    # tests ran first, as in `make test`; minutes alone on a loaded 2-core machine): done
    # here, so the time limits below measure the dashboard.
    await load_litellm()
    page = await browser_page(f"{server_url}/dashboard")
    expect = _expect

    # Sign in with the keyboard alone.
    await expect(page.get_by_label("Email", exact=True)).to_be_focused()
    await page.keyboard.type(team.email)
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.locator("#who")).to_contain_text(team.email)
    # Reloading while requests are in flight would abort them (failed requests).
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    # Only the tokens are kept, for the tab alone (sessionStorage), not the password.
    stored = await page.evaluate(
        "() => ({local: Object.keys(localStorage), session: Object.keys(sessionStorage),"
        " value: sessionStorage.getItem('crewgraph.dashboard.tokens')})"
    )
    assert stored["local"] == [] and stored["session"] == [TOKEN_KEY], stored
    assert PASSWORD not in stored["value"]

    # An expired access token is refreshed (the pair rotates) before the next request.
    first = json.loads(stored["value"])
    await page.evaluate(
        "k => { const t = JSON.parse(sessionStorage.getItem(k)); t.expiresAt = 0;"
        " sessionStorage.setItem(k, JSON.stringify(t)); }",
        TOKEN_KEY,
    )
    await page.reload()
    await expect(page.locator("#who")).to_contain_text(team.email)
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    again = json.loads(await page.evaluate("k => sessionStorage.getItem(k)", TOKEN_KEY))
    assert again["refreshToken"] != first["refreshToken"]
    assert again["expiresAt"] > first["expiresAt"]

    # The graph: laid out left to right, each kind with its own shape and label.
    await _open_flow(page, ids["greeting_name"])
    for node_id, kind, shape in (
        ("in", "INPUT", "rect"),
        ("ask", "LLM", "rect"),
        ("check", "CONDITION", "polygon"),
        ("yes", "OUTPUT", "rect"),
    ):
        await expect(_node(page, node_id)).to_have_attribute("data-kind", kind)
        await expect(_node(page, node_id).locator(f"{shape}.outline")).to_have_count(1)
        await expect(_node(page, node_id).locator(".kind")).to_have_text(kind)
    xs = [(await _node(page, n).bounding_box())["x"] for n in ("in", "ask", "check", "yes")]
    assert xs == sorted(xs) and len(set(xs)) == 4, xs
    await expect(page.locator("#run-inputs")).to_have_value('{\n  "name": ""\n}')

    # Run it: nodes turn green, the model's tokens appear under the LLM node, the untaken
    # branch is skipped, and the run's usage shows.
    await page.get_by_label("Inputs (JSON object)").fill('{"name": "Ada"}')
    await page.get_by_role("button", name="Run", exact=True).click()
    await expect(_node(page, "ask")).to_have_attribute("data-state", "COMPLETED", timeout=LIVE_MS)
    await expect(page.locator("#run-status")).to_have_text("COMPLETED", timeout=LIVE_MS)
    await expect(page.locator('[data-tokens-for="ask"]')).to_have_text("hello dashboard Ada")
    await expect(_node(page, "ask").locator(".preview")).to_have_text("hello dashboard Ada")
    for node_id in ("in", "check", "yes"):
        await expect(_node(page, node_id)).to_have_attribute("data-state", "COMPLETED")
    await expect(_node(page, "no")).to_have_attribute("data-state", "SKIPPED")
    await expect(page.locator('dd[data-usage="LLM calls"]')).to_have_text("1")
    await expect(page.locator('dd[data-usage="Completion tokens"]')).to_have_text("3")
    await expect(page.locator('dd[data-usage="Cost"]')).to_have_text("no price")
    await expect(page.locator("#node-ask .node-usage")).to_contain_text("tokens")
    await shot(page, "1-completed", full_page=True)

    # Runs started elsewhere (here: through the API) show up live (executionUpdates).
    other = await f.execute(gql, team.token, ids["greeting"], {"name": "Bob"})
    row = page.locator(f'button[data-execution-id="{other["id"]}"]')
    await expect(row).to_have_attribute("data-status", "COMPLETED", timeout=LIVE_MS)
    # ... and open with their own events (replayed), the other branch taken this time.
    await row.click()
    await expect(page.locator("#run-status")).to_have_text("COMPLETED")
    await expect(_node(page, "no")).to_have_attribute("data-state", "COMPLETED")
    await expect(_node(page, "yes")).to_have_attribute("data-state", "SKIPPED")
    await expect(page.locator('[data-tokens-for="ask"]')).to_have_text("hello dashboard Bob")

    # A slow run streams token by token; Cancel stops it.
    await _open_flow(page, ids["slow_name"])
    await page.get_by_role("button", name="Run", exact=True).click()
    await expect(page.locator('[data-tokens-for="ask"]')).to_contain_text(
        "Scripted reply", timeout=LIVE_MS
    )
    await expect(_node(page, "ask")).to_have_attribute("data-state", "RUNNING")
    await shot(page, "2-streaming")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator("#run-status")).to_have_text("CANCELLED", timeout=LIVE_MS)
    await expect(_node(page, "ask")).to_have_attribute("data-state", "CANCELLED")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_disabled()
    streamed = await page.locator('[data-tokens-for="ask"]').text_content()
    assert streamed and len(streamed) < 50 * len("Scripted reply: count"), streamed

    # An approval waits for an answer, given here; the approved branch runs.
    await _open_flow(page, ids["approval_name"])
    await page.get_by_role("button", name="Run", exact=True).click()
    await expect(page.locator("#run-status")).to_have_text("WAITING", timeout=LIVE_MS)
    await expect(_node(page, "ask")).to_have_attribute("data-state", "WAITING")
    card = page.get_by_role("group", name="Approval needed: ask")
    await expect(card).to_contain_text("Publish the report?")
    await shot(page, "3-approval", full_page=True)
    await card.get_by_label("Comment (optional)").fill("ship it")
    await card.get_by_role("button", name="Approve").click()
    await expect(page.locator("#run-status")).to_have_text("COMPLETED", timeout=LIVE_MS)
    await expect(_node(page, "ask")).to_have_attribute("data-state", "COMPLETED")
    await expect(_node(page, "yes")).to_have_attribute("data-state", "COMPLETED")
    await expect(_node(page, "no")).to_have_attribute("data-state", "SKIPPED")
    run_id = await page.locator("button.exec").first.get_attribute("data-execution-id")
    done = (await gql.ok("Execution", {"id": run_id}, token=team.token))["execution"]
    answer = {r["nodeId"]: r["output"] for r in done["nodeRuns"]}["ask"]
    assert answer["approved"] is True and answer["comment"] == "ship it"

    # Chat with the scripted model; the reply streams in over chatTokens.
    await page.get_by_label("Talk to").select_option(label="Local (scripted) (scripted)")
    await page.get_by_role("button", name="New chat").click()
    await expect(page.get_by_label("Message")).to_be_focused()
    await page.keyboard.type("SAY: hi there from the dashboard")
    await page.keyboard.press("Enter")
    reply = page.locator('#chat-log li.role-ASSISTANT[data-status="COMPLETED"] .content')
    await expect(reply).to_have_text("hi there from the dashboard", timeout=LIVE_MS)
    await expect(page.locator("#chat-log li.role-USER .content")).to_have_text(
        "SAY: hi there from the dashboard"
    )
    await shot(page, "4-chat", full_page=True)

    # Every control is reachable by keyboard and shows where the focus is.
    await page.get_by_role("button", name="Reload").focus()
    await page.keyboard.press("Tab")
    outline = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"

    # A phone-sized screen: one column, nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    await _open_flow(page, ids["greeting_name"])
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, width
    await expect(page.locator("#graph")).to_be_visible()
    await shot(page, "5-phone")
    await shot(page, "5-phone-full", full_page=True)

    # Signing out forgets the tokens.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Email", exact=True)).to_be_visible()
    assert await page.evaluate("() => Object.keys(sessionStorage)") == []

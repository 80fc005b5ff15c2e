"""The scripted model's HTTP endpoint as anyone who reaches the API sees it: served by
uvicorn on a free port and called over real HTTP. Its request log (every tenant's
prompts, no authentication) is opt-in and bounded; malformed requests are 4xx, never a
500; requests in progress at once are bounded (`scripted-hang` cannot pin every slot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runtime.scripted import RequestLog, ScriptedEndpoint, scripted_app
from tests.conftest import serving

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "SAY: hi"}]}


@pytest.fixture
async def plain() -> AsyncIterator[str]:
    async with serving(scripted_app()) as url:
        yield url


async def test_the_request_log_is_off_unless_asked_for(plain: str) -> None:
    async with httpx.AsyncClient(base_url=plain) as http:
        answered = await http.post("/chat/completions", json=CHAT)
        assert answered.status_code == 200
        assert answered.json()["choices"][0]["message"]["content"] == "hi"
        assert (await http.get("/_requests")).status_code == 404

    async with serving(scripted_app(request_log=True)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            await http.post("/chat/completions", json=CHAT, headers={"X-Crewgraph-Run": "r1"})
            logged = (await http.get("/_requests", params={"tag": "r1"})).json()["requests"]
    assert [e["last_user"] for e in logged] == ["SAY: hi"]


def test_the_request_log_is_bounded_in_entries_and_in_each_entry() -> None:
    log = RequestLog(size=3)
    for i in range(5):
        log.add(
            {
                "model": "scripted",
                "stream": False,
                "run": None,
                "node": None,
                "user": None,
                "messages": 1,
                "tools": [],
                "last_user": str(i),
            }
        )
    assert [e.last_user for e in log.find()] == ["2", "3", "4"]


async def test_logged_fields_are_clipped() -> None:
    huge = "x" * 50_000
    async with serving(scripted_app(request_log=True)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            body = {
                "model": huge,
                "user": huge,
                "messages": [{"role": "user", "content": huge}],
                "tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(500)],
            }
            assert (await http.post("/chat/completions", json=body)).status_code == 404
            (entry,) = (await http.get("/_requests")).json()["requests"]
    assert len(entry["model"]) <= 500 and len(entry["user"]) <= 500
    assert len(entry["last_user"]) <= 500 and len(entry["tools"]) <= 20


MALFORMED: list[Any] = [
    {"model": "scripted", "messages": [{"role": "user", "content": "use tool a"}], "tools": ["a"]},
    {
        "model": "scripted",
        "messages": [{"role": "user", "content": "use tool a"}],
        "tools": ["junk", {"type": "function", "function": {"name": "a", "parameters": []}}],
    },
    {
        "model": "scripted",
        "messages": [{"role": "user", "content": "use tool a"}],
        "tools": [{"function": {"name": "a", "parameters": {"required": [["x"]]}}}],
    },
    {"model": "scripted", "messages": [{"role": "assistant", "tool_calls": 5}]},
    {"model": "scripted", "messages": [{"role": "assistant", "tool_calls": ["x"]}]},
    {"model": "scripted", "messages": [{"role": "assistant", "tool_calls": [{"function": 1}]}]},
    {"model": "scripted", "messages": [{"role": "user", "content": [1, {"text": None}]}]},
    {"model": "scripted", "messages": "hello"},
    {"model": "scripted-slow", "messages": [], "max_tokens": "many", "stream": True},
    [1, 2, 3],
    "just a string",
]


async def test_malformed_requests_are_4xx_never_500(plain: str) -> None:
    async with httpx.AsyncClient(base_url=plain) as http:
        for body in MALFORMED:
            resp = await http.post("/chat/completions", json=body)
            assert 200 <= resp.status_code < 500, (body, resp.status_code, resp.text)
        deep = "[" * 100_000 + "]" * 100_000  # nests deeper than the JSON parser recurses
        for raw in (b"{not json", deep.encode(), b"\xff\xfe"):
            resp = await http.post(
                "/chat/completions", content=raw, headers={"content-type": "application/json"}
            )
            assert resp.status_code == 400, (raw[:20], resp.status_code)


async def test_requests_in_progress_are_bounded_and_their_places_freed() -> None:
    endpoint = ScriptedEndpoint(max_concurrent=2)
    hang = {"model": "scripted-hang", "messages": [{"role": "user", "content": "wait"}]}
    async with serving(endpoint.app()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            hanging = [asyncio.create_task(http.post("/chat/completions", json=hang))]
            hanging.append(asyncio.create_task(http.post("/chat/completions", json=hang)))
            await asyncio.sleep(0.5)
            busy = await http.post("/chat/completions", json=CHAT)
            assert busy.status_code == 429, busy.text
            assert busy.json()["error"]["type"] == "rate_limit_error"
            for task in hanging:  # the clients go away: the model notices and frees places
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            deadline = asyncio.get_running_loop().time() + 5
            while (resp := await http.post("/chat/completions", json=CHAT)).status_code == 429:
                assert asyncio.get_running_loop().time() < deadline, "places never freed"
                await asyncio.sleep(0.1)
            assert resp.status_code == 200


async def test_a_failed_call_keeps_nothing_of_litellms_exception(plain: str) -> None:
    """The key is in LiteLLM's exception (its message, the request's headers): the error
    the gateway raises is scrubbed and does not even chain to it."""
    from domain.llm import LlmCallFailed, LlmRequest, LlmTarget
    from runtime.litellm_client import LiteLlmClient

    key = "sk-chained-Secret-7"
    target = LlmTarget("p", "n", "openai", "scripted", plain, api_key=key, timeout_seconds=20)
    request = LlmRequest(messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(LlmCallFailed) as failed:
        await LiteLlmClient().complete(target, request)
    assert failed.value.kind == "auth" and key not in str(failed.value)
    assert failed.value.__cause__ is None and failed.value.__context__ is None

"""A small GraphQL client over real HTTP and graphql-transport-ws."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import websockets

OPERATIONS = Path(__file__).resolve().parents[2] / "graphql" / "operations"


@cache
def _documents() -> dict[str, str]:
    """Named operations from graphql/operations/*.graphql, plus the fragments they use."""
    text = "\n".join(p.read_text() for p in sorted(OPERATIONS.glob("*.graphql")))
    blocks = re.split(r"\n(?=(?:query|mutation|subscription|fragment) )", "\n" + text)
    ops: dict[str, str] = {}
    fragments: dict[str, str] = {}
    for block in blocks:
        block = block.strip()
        m = re.match(r"(query|mutation|subscription|fragment) (\w+)", block)
        if not m:
            continue
        (fragments if m.group(1) == "fragment" else ops)[m.group(2)] = block
    for name, doc in list(ops.items()):
        needed: dict[str, str] = {}
        pending = set(re.findall(r"\.\.\.(\w+)", doc))
        while pending:
            frag = pending.pop()
            if frag in needed:
                continue
            needed[frag] = fragments[frag]
            pending |= set(re.findall(r"\.\.\.(\w+)", fragments[frag]))
        ops[name] = "\n".join([doc, *needed.values()])
    return ops


def op(name: str) -> str:
    return _documents()[name]


class GQL:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def raw(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        api_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if api_key:
            headers["X-API-Key"] = api_key
        resp = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert resp.status_code < 500, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def op(
        self, name: str, variables: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        return await self.raw(op(name), variables, **kw)

    async def ok(
        self, name_or_query: str, variables: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        query = op(name_or_query) if re.fullmatch(r"\w+", name_or_query) else name_or_query
        body = await self.raw(query, variables, **kw)
        assert not body.get("errors"), json.dumps(body["errors"], indent=1)
        data: dict[str, Any] = body["data"]
        return data

    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/graphql"

    def connect_ws(self, protocol: str = "graphql-transport-ws") -> Any:
        return websockets.connect(self.ws_url(), subprotocols=[protocol])  # type: ignore[list-item]


def error_code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors") or []
    return errors[0].get("extensions", {}).get("code") if errors else None

"""The baseline for the query-path benchmark: plain Starlette + asyncpg answering the
same JSON as `agents(first: 20) { edges { node { id name role goal tools { id name } } } }`
and `me { id email role }`, each from one SQL statement (served by uvicorn, one process,
like the API). Run: `python -m uvicorn bench._plain_app:app` with DATABASE_URL,
CREWGRAPH_JWT_SECRET and BENCH_TENANT_SCHEMA set."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_SCHEMA = os.environ.get("BENCH_TENANT_SCHEMA", "")
if not re.fullmatch(r"tenant_[a-f0-9]{12}", _SCHEMA):
    raise SystemExit("BENCH_TENANT_SCHEMA must name a tenant schema")

AGENTS_SQL = f"""
SELECT a.id::text, a.name, a.role, a.goal,
       COALESCE((SELECT json_agg(json_build_object('id', t.id::text, 'name', t.name)
                                 ORDER BY l.position)
                 FROM {_SCHEMA}.agent_tools l JOIN {_SCHEMA}.tools t ON t.id = l.tool_id
                 WHERE l.agent_id = a.id)::text, '[]')
FROM {_SCHEMA}.agents a ORDER BY a.created_at, a.id LIMIT 20
"""
ME_SQL = "SELECT id::text, email, role FROM public.users WHERE id = $1::uuid"

_pool: Any = None


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    global _pool
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    _pool = await asyncpg.create_pool(dsn, min_size=4, max_size=10)
    yield
    await _pool.close()


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def _user_id(request: Request) -> str | None:
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    try:
        claims = jwt.decode(token, os.environ["CREWGRAPH_JWT_SECRET"], algorithms=["HS256"])
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


async def agents(request: Request) -> Response:
    if _user_id(request) is None:
        return Response(status_code=401)
    rows = await _pool.fetch(AGENTS_SQL)
    edges = [
        {"node": {"id": r[0], "name": r[1], "role": r[2], "goal": r[3], "tools": json.loads(r[4])}}
        for r in rows
    ]
    return _json({"data": {"agents": {"edges": edges}}})


async def me(request: Request) -> Response:
    uid = _user_id(request)
    if uid is None:
        return Response(status_code=401)
    row = await _pool.fetchrow(ME_SQL, uid)
    return _json({"data": {"me": {"id": row[0], "email": row[1], "role": row[2].upper()}}})


async def typename(request: Request) -> Response:
    return _json({"data": {"__typename": "Query"}})


app = Starlette(
    routes=[
        Route("/agents", agents, methods=["POST"]),
        Route("/me", me, methods=["POST"]),
        Route("/typename", typename, methods=["POST"]),
    ],
    lifespan=_lifespan,
)

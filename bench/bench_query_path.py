"""The GraphQL query path against a plain Starlette + asyncpg endpoint, same run, same rows.

- `agents(first: 20) { edges { node { id name role goal tools { id name } } } }` (20
  agents, 2 tools each) against bench/_plain_app.py answering the same JSON from one SQL
  statement; `me` and `{ __typename }` likewise (the plain endpoints verify the same JWT).
- `{ __typename }` with one client logging in back to back beside it, against without:
  argon2 must not run on the event loop.

Both servers are one uvicorn process each, on the same machine and database. Load:
bench/_loadgen.py in a process of its own (wrk is not installed here), 32 keep-alive
connections, the pairs measured interleaved round after round; the ratio is of the
medians over the rounds."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import machine, server, services  # noqa: E402
from tests.support import builders as b  # noqa: E402
from tests.support.client import GQL  # noqa: E402
from tests.support.services import free_port  # noqa: E402

AGENTS = "{ agents(first: 20) { edges { node { id name role goal tools { id name } } } } }"
ME = "{ me { id email role } }"
TYPENAME = "{ __typename }"
LOGIN = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }"


def _body(query: str, variables: dict[str, Any] | None = None) -> str:
    return json.dumps({"query": query, "variables": variables or {}})


async def _load(url: str, body: str, token: str, seconds: float, side: str = "") -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / "_loadgen.py"), url, body, "-c", "32"]
    cmd += ["-d", str(seconds), "--token", token]
    if side:
        cmd += ["--side", side]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


async def _plain_server(
    svc: Any, schema: str, jwt_secret: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": svc.database_url,
        "CREWGRAPH_JWT_SECRET": jwt_secret,
        "BENCH_TENANT_SCHEMA": schema,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench._plain_app:app",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(150):
            try:
                await client.post(url + "/typename")
                return proc, url
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the plain server did not start")


async def run(short: bool) -> None:
    seconds = 1.0 if short else 4.0
    rounds = 1 if short else 3
    jwt_secret = secrets.token_urlsafe(40)
    async with services() as svc, server(svc, CREWGRAPH_JWT_SECRET=jwt_secret) as srv:
        gql = GQL(srv.url)
        email, password = f"q{uuid.uuid4().hex[:6]}@example.com", "correct horse battery"
        reg = await gql.ok(
            "Register", {"input": {"tenantName": "bench", "email": email, "password": password}}
        )
        token = reg["register"]["accessToken"]
        tools = [await b.tool(gql, token) for _ in range(4)]
        for i in range(20):
            ids = [tools[i % 4]["id"], tools[(i + 1) % 4]["id"]]
            await b.agent(gql, token, toolIds=ids)
        conn = await asyncpg.connect(svc.database_url.replace("+asyncpg", ""))
        schema = await conn.fetchval("SELECT schema_name FROM public.tenants LIMIT 1")
        await conn.close()
        plain, plain_url = await _plain_server(svc, schema, jwt_secret)
        try:
            # Same answers, or the comparison means nothing.
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(headers=headers) as client:
                for query, path in ((AGENTS, "/agents"), (ME, "/me"), (TYPENAME, "/typename")):
                    api = (await client.post(srv.url + "/graphql", json={"query": query})).json()
                    raw = (await client.post(plain_url + path)).json()
                    assert api == raw, (api, raw)
            pairs = {
                "agents": ((srv.url + "/graphql", _body(AGENTS)), (plain_url + "/agents", "{}")),
                "me": ((srv.url + "/graphql", _body(ME)), (plain_url + "/me", "{}")),
                "typename": (
                    (srv.url + "/graphql", _body(TYPENAME)),
                    (plain_url + "/typename", "{}"),
                ),
            }
            login = "/graphql " + _body(LOGIN, {"i": {"email": email, "password": password}})
            results: dict[str, list[dict[str, Any]]] = {}
            for _ in range(rounds):
                for name, (api, base) in pairs.items():
                    for side, (url, body) in (("api", api), ("plain", base)):
                        r = await _load(url, body, token, seconds)
                        results.setdefault(f"{name}/{side}", []).append(r)
                r = await _load(srv.url + "/graphql", _body(TYPENAME), token, seconds, login)
                results.setdefault("typename/logins", []).append(r)
        finally:
            plain.terminate()
            plain.wait(10)
        await gql.aclose()
    _report(results, seconds, rounds)


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _report(results: dict[str, list[dict[str, Any]]], seconds: float, rounds: int) -> None:
    tool = "wrk" if shutil.which("wrk") else "bench/_loadgen.py (wrk not installed)"
    print(
        f"Query path ({machine()}); load: {tool}, 32 connections, {rounds} interleaved "
        f"round(s) of {seconds:g} s per endpoint; medians over the rounds. Plain: Starlette "
        "+ asyncpg, one SQL statement per request (bench/_plain_app.py), same rows, same JWT."
    )
    print()
    print("| query | API req/s | p50 | p99 | plain req/s | p50 | p99 | ratio | target | |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    targets = {"agents": 0.25, "me": 0.5, "typename": None}
    errors = sum(r["errors"] for runs in results.values() for r in runs)
    for name, target in targets.items():
        api, plain = results[f"{name}/api"], results[f"{name}/plain"]
        ratio = _med(api, "rps") / _med(plain, "rps")
        verdict = "" if target is None else ("OK" if ratio >= target else "MISSED")
        print(
            f"| {name} | {_med(api, 'rps'):.0f} | {_med(api, 'p50'):.1f} ms "
            f"| {_med(api, 'p99'):.1f} ms | {_med(plain, 'rps'):.0f} "
            f"| {_med(plain, 'p50'):.1f} ms | {_med(plain, 'p99'):.1f} ms | {ratio:.3f} "
            f"| {'' if target is None else f'≥ {target}'} | {verdict} |"
        )
    base, busy = results["typename/api"], results["typename/logins"]
    ratio = _med(busy, "rps") / _med(base, "rps")
    logins = statistics.median(r["side_requests"] / seconds for r in busy)
    print()
    print(
        f"`{{ __typename }}` with one client logging in back to back beside it "
        f"({logins:.1f} logins/s): {_med(busy, 'rps'):.0f} req/s, p99 "
        f"{_med(busy, 'p99'):.1f} ms, against {_med(base, 'rps'):.0f} req/s, p99 "
        f"{_med(base, 'p99'):.1f} ms without: ratio {ratio:.2f} (target ≥ 0.8): "
        f"{'OK' if ratio >= 0.8 else 'MISSED'}."
    )
    print()
    print(f"Failed requests: {errors}.")
    if errors:
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", action="store_true")
    asyncio.run(run(parser.parse_args().short))

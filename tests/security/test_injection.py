"""Injection strings in every text argument of every operation of the live schema.

Each String argument (top-level or inside an input object) and each JSON argument gets
hostile values while the other arguments are plausible (the caller's own real ids, valid
enum values, ...). The answer is never a 5xx or an error without a code; a value that is
accepted and echoed back comes back verbatim (stored, never evaluated); a value that is
refused is refused with a client error code.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest

import graphql
from tests.conftest import Team
from tests.security.test_cross_tenant_sweep import document, seed_tenant
from tests.support.client import GQL

pytestmark = pytest.mark.timeout(300)

TEXT_PAYLOADS = [
    "' OR 1=1 --",
    '"; DROP TABLE users; --',
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "${7*7} #{7*7} {{ 7*7 }}",
    "../../../../etc/passwd",
    "nul\x00byte",
    "\u202eevil\u200b\u200d\ufeffname",
    "<script>alert(1)</script>",
]
JSON_PAYLOADS: list[Any] = [
    {"$gt": ""},
    {"$where": "sleep(1000)", "__proto__": {"admin": True}},
    {"{{ 7*7 }}": "{{ cycler.__init__.__globals__ }}"},
    ["' OR 1=1 --", None, {"$ne": None}],
]
ONE_MB = "A" * (1024 * 1024)
#: The short run (``make test``) sends each site a rotating third of the payloads (every
#: payload still reaches every operation); ``make fuzz`` sends all of them everywhere.
ALL_PAYLOADS = bool(os.environ.get("CREWGRAPH_FUZZ_EXAMPLES"))
#: Codes that refuse a request without having done anything wrong on the server's side.
CLIENT_CODES = {
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "CONFLICT",
    "FORBIDDEN",
    "UNAUTHENTICATED",
    "LIMIT_EXCEEDED",
    "RATE_LIMITED",
    "GRAPHQL_VALIDATION_FAILED",
    "GRAPHQL_PARSE_FAILED",
}
#: Would end the caller's session.
SKIPPED = {"logout"}


def sites(fdef: graphql.GraphQLField, scalar: str) -> list[tuple[str, ...]]:
    """Paths of every argument (or input field) of the scalar type `scalar`."""
    found: list[tuple[str, ...]] = []

    def walk(type_: graphql.GraphQLType, path: tuple[str, ...], seen: frozenset[str]) -> None:
        named = graphql.get_named_type(type_)
        if isinstance(named, graphql.GraphQLScalarType) and named.name == scalar:
            found.append(path)
        elif isinstance(named, graphql.GraphQLInputObjectType) and named.name not in seen:
            for name, sub in named.fields.items():
                walk(sub.type, (*path, name), seen | {named.name})

    for name, arg in fdef.args.items():
        walk(arg.type, (name,), frozenset())
    return found


async def _attempt(
    gql: GQL,
    team: Team,
    mine: dict[str, str],
    root: str,
    field_name: str,
    fdef: graphql.GraphQLField,
    path: tuple[str, ...],
    payload: Any,
) -> str | None:
    query, variables = document(
        root, field_name, fdef, path, (mine, mine), at_target=lambda _type: payload
    )
    resp = await gql.http.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {team.token}"},
    )
    where = f"{root}.{field_name}({'.'.join(path)}={str(payload)[:60]!r})"
    if resp.status_code >= 500:
        return f"{where}: HTTP {resp.status_code} {resp.text[:300]}"
    try:
        body = resp.json()
    except ValueError:
        return f"{where}: HTTP {resp.status_code} not JSON: {resp.text[:300]}"
    text = resp.text
    if "Traceback" in text or "sqlalchemy" in text or "asyncpg" in text:
        return f"{where}: internals in the answer: {text[:400]}"
    if "uid=" in text and "gid=" in text:
        return f"{where}: template evaluated: {text[:400]}"
    errors = body.get("errors") or []
    codes = {(e.get("extensions") or {}).get("code") for e in errors}
    if errors and not codes <= CLIENT_CODES:
        return f"{where}: codes {codes}: {text[:400]}"
    result = (body.get("data") or {}).get(field_name)
    if not errors and isinstance(payload, str) and isinstance(result, dict):
        echoed = result.get(path[-1])
        if isinstance(echoed, str) and echoed != payload and payload.strip() == payload:
            return f"{where}: stored as {echoed[:80]!r}, not verbatim"
    return None


async def test_hostile_text_in_every_argument(gql: GQL) -> None:
    from server.graphql_schema import schema

    seeded = await seed_tenant(gql, canary="inject" + uuid.uuid4().hex[:6])
    team, mine = seeded.team, seeded.ids
    problems: list[str] = []
    tried = 0
    for root in ("Query", "Mutation"):
        root_type = schema._schema.get_type(root)
        assert isinstance(root_type, graphql.GraphQLObjectType)
        for field_name, fdef in root_type.fields.items():
            if field_name in SKIPPED:
                continue
            text_sites = sites(fdef, "String")
            for n, path in enumerate(text_sites):
                for i, payload in enumerate(TEXT_PAYLOADS):
                    if not ALL_PAYLOADS and (i + n) % 3:
                        continue
                    tried += 1
                    if problem := await _attempt(
                        gql, team, mine, root, field_name, fdef, path, payload
                    ):
                        problems.append(problem)
            if text_sites:  # one huge value per operation: refused or stored, never a 500
                tried += 1
                if problem := await _attempt(
                    gql, team, mine, root, field_name, fdef, text_sites[0], ONE_MB
                ):
                    problems.append(problem)
            for n, path in enumerate(sites(fdef, "JSON")):
                for i, value in enumerate(JSON_PAYLOADS):
                    if not ALL_PAYLOADS and (i + n) % 2:
                        continue
                    tried += 1
                    if problem := await _attempt(
                        gql, team, mine, root, field_name, fdef, path, value
                    ):
                        problems.append(problem)
    assert tried > 100
    assert not problems, "\n".join(problems)
    # the hostile names did not break reading the tenant back
    assert (await gql.ok("Me", token=team.token))["me"]["id"] == team.user_id
    body = await gql.raw("{ tools(first: 50) { edges { node { name } } } }", token=team.token)
    assert not body.get("errors"), json.dumps(body)

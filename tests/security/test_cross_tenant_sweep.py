"""Every query, mutation and subscription, called with another tenant's REAL ids.

The operations come from the live schema (``server.graphql_schema.schema``), so a new one
is swept automatically: each ID argument (top-level or inside an input object) gets the id
of a resource of tenant B while the caller is an admin of tenant A. The answer must be
NOT_FOUND (or null / an empty result for reads; BAD_USER_INPUT for an id inside an input),
never B's data, and B's resources must be unchanged afterwards.

Which resource an ID argument names is inferred from its name (``flowId`` -> flow) or, for
a bare ``id``, from the operation name (``deleteWebhook`` -> webhook). An operation whose
id kind cannot be inferred, or that takes no id and is not in :data:`NO_ID_OPERATIONS`,
fails the test with a message saying what to add.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import graphql
from tests.conftest import Team, add_member, register
from tests.support import builders
from tests.support.client import GQL
from tests.support.flows import branching, create_flow, execute
from tests.support.ws import init, recv, subscribe

pytestmark = pytest.mark.timeout(240)

#: Operations that take no id at all, reviewed: they only ever see the caller's tenant.
NO_ID_OPERATIONS = {
    "Query": {
        "me",
        "tenant",
        "users",
        "apiKeys",
        "llmProviders",
        "agents",
        "crews",
        "tools",
        "flows",
        "validateFlow",
        "flowTemplates",
        "chatSessions",
        "auditLog",
        "usage",
        "webhooks",
    },
    "Mutation": {
        "register",
        "login",
        "refreshToken",
        "logout",
        "createUser",
        "createApiKey",
        "createTool",
        "createFlow",
        "createWebhook",
    },
    "Subscription": {"heartbeat", "executionUpdates"},
}

#: Resource kinds of the id pool, and other words the schema uses for them. An ID argument
#: names the longest kind (or alias) contained in its name.
KIND_ALIASES = {
    "llmprovider": "llmprovider",
    "provider": "llmprovider",
    "tool": "tool",
    "agent": "agent",
    "crew": "crew",
    "flow": "flow",
    "execution": "execution",
    "user": "user",
    "apikey": "apikey",
    "chatsession": "chatsession",
    "session": "chatsession",
    "schedule": "schedule",
    "webhook": "webhook",
}

#: Values the minimal filler ("x", 1, ...) would get refused for before the id is looked
#: up: with these, an update of B's resource must answer NOT_FOUND, not BAD_USER_INPUT.
VALID_FIELDS: dict[tuple[str, str], Any] = {
    ("LlmProviderInput", "provider"): "openai",
    ("LlmProviderInput", "model"): "gpt-4o-mini",
    ("ScheduleInput", "cron"): "0 3 * * *",
    ("WebhookInput", "url"): "http://127.0.0.1:9/hook",
    ("ToolInput", "kind"): "CUSTOM_PYTHON",
    ("ToolInput", "config"): {"code": builders.PY_CODE},
}

#: Readable by B afterwards: query field -> kind (B's resources must still be there).
STILL_THERE = {
    "llmProvider": "llmprovider",
    "tool": "tool",
    "agent": "agent",
    "crew": "crew",
    "flow": "flow",
    "execution": "execution",
    "chatSession": "chatsession",
    "schedule": "schedule",
    "webhook": "webhook",
}

CANARY = "canaryb" + uuid.uuid4().hex[:10]


@dataclass
class Seeded:
    team: Team
    ids: dict[str, str]
    canary: str = CANARY
    extra: dict[str, Any] = field(default_factory=dict)


async def seed_tenant(gql: GQL, *, canary: str = CANARY) -> Seeded:
    """A tenant with one of each resource, every name carrying `canary`."""
    team = await register(gql, f"{canary} team")
    tok = team.token
    p = await builders.provider(gql, tok, name=f"{canary}-llmprovider")
    t = await builders.tool(gql, tok, name=f"{canary}-tool")
    a = await builders.agent(
        gql, tok, name=f"{canary}-agent", llmProviderId=p["id"], toolIds=[t["id"]]
    )
    c = await builders.crew(gql, tok, [a["id"]], name=f"{canary}-crew")
    f = await builders.flow(gql, tok, a["id"], c["id"], t["id"], name=f"{canary}-bigflow")
    ids = {"llmprovider": p["id"], "tool": t["id"], "agent": a["id"], "crew": c["id"]}
    ids["flow"] = f["id"]
    simple = await create_flow(gql, tok, branching(f"{canary}-flow"))
    ids["execution"] = (await execute(gql, tok, simple["id"], {"score": 7}))["id"]
    user = await add_member(gql, team, "MEMBER", f"{canary}@example.com")
    ids["user"] = user.id
    key = await gql.ok("CreateApiKey", {"name": f"{canary}-key", "role": "VIEWER"}, token=tok)
    ids["apikey"] = key["createApiKey"]["id"]
    chat = await gql.ok(
        "CreateChatSession",
        {"input": {"title": f"{canary}-chat", "llmProviderId": ids["llmprovider"]}},
        token=tok,
    )
    ids["chatsession"] = chat["createChatSession"]["id"]
    schedule = await gql.ok(
        "CreateSchedule",
        {"input": {"flowId": simple["id"], "cron": "0 3 * * *", "inputs": {"score": 1}}},
        token=tok,
    )
    ids["schedule"] = schedule["createSchedule"]["id"]
    hook = await gql.ok(
        "CreateWebhook",
        {"input": {"url": f"http://127.0.0.1:9/{canary}", "events": ["EXECUTION_COMPLETED"]}},
        token=tok,
    )
    ids["webhook"] = hook["createWebhook"]["webhook"]["id"]
    return Seeded(team, ids, canary, {"user": user})


def kind_of(name: str) -> str | None:
    lowered = name.lower()
    for suffix in ("ids", "id"):
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            lowered = lowered[: -len(suffix)]
            break
    hits = [alias for alias in KIND_ALIASES if alias in lowered]
    return KIND_ALIASES[max(hits, key=len)] if hits else None


# -- generic document building --------------------------------------------------------------


def _is_id(type_: graphql.GraphQLType) -> bool:
    named = graphql.get_named_type(type_)
    return isinstance(named, graphql.GraphQLScalarType) and named.name == "ID"


def id_sites(field_name: str, fdef: graphql.GraphQLField) -> list[tuple[tuple[str, ...], str]]:
    """(path of the ID argument, name used to infer its kind) for every ID argument."""
    sites: list[tuple[tuple[str, ...], str]] = []

    def walk(type_: graphql.GraphQLType, path: tuple[str, ...], seen: frozenset[str]) -> None:
        named = graphql.get_named_type(type_)
        if isinstance(named, graphql.GraphQLInputObjectType) and named.name not in seen:
            for name, sub in named.fields.items():
                if _is_id(sub.type):
                    sites.append(((*path, name), name))
                else:
                    walk(sub.type, (*path, name), seen | {named.name})

    for name, arg in fdef.args.items():
        if _is_id(arg.type):
            sites.append(((name,), field_name if name == "id" else name))
        else:
            walk(arg.type, (name,), frozenset())
    return sites


def _value(
    type_: graphql.GraphQLInputType,
    path: tuple[str, ...],
    target: tuple[str, ...],
    pools: tuple[dict[str, str], dict[str, str]],
    name: str,
    *,
    required_only: bool,
    at_target: Callable[[graphql.GraphQLNamedType], Any] | None = None,
) -> Any:
    """A plausible value: B's id at `target`, A's own ids at other ID sites, minimal
    values elsewhere."""
    list_ = False
    inner = type_
    if isinstance(inner, graphql.GraphQLNonNull):
        inner = inner.of_type
    if isinstance(inner, graphql.GraphQLList):
        list_ = True
        inner = graphql.get_nullable_type(inner.of_type)
    value: Any
    if at_target is not None and path == target:
        value = at_target(inner)
    elif isinstance(inner, graphql.GraphQLScalarType):
        if inner.name == "ID":
            mine, theirs = pools
            kind = kind_of(name) or ""
            value = theirs.get(kind, str(uuid.uuid4())) if path == target else mine.get(kind)
            if value is None:
                value = str(uuid.uuid4())
        else:
            value = {
                "String": "x",
                "Int": 1,
                "Float": 1.0,
                "Boolean": True,
                "JSON": {},
                "DateTime": "2030-01-01T00:00:00Z",
                "Date": "2030-01-01",
            }.get(inner.name, "x")
    elif isinstance(inner, graphql.GraphQLEnumType):
        value = next(iter(inner.values))
    else:
        assert isinstance(inner, graphql.GraphQLInputObjectType)
        value = {}
        for fname, f in inner.fields.items():
            sub = (*path, fname)
            on_target = target[: len(sub)] == sub
            if (inner.name, fname) in VALID_FIELDS and not on_target:
                value[fname] = VALID_FIELDS[inner.name, fname]
            elif on_target or graphql.is_required_input_field(f):
                value[fname] = _value(
                    f.type, sub, target, pools, fname, required_only=True, at_target=at_target
                )
    return [value] if list_ else value


def selection(type_: graphql.GraphQLOutputType, depth: int = 2) -> str:
    named = graphql.get_named_type(type_)
    if not isinstance(named, graphql.GraphQLObjectType | graphql.GraphQLInterfaceType):
        return ""
    parts = ["__typename"]
    for name, f in named.fields.items():
        if any(graphql.is_required_argument(a) for a in f.args.values()):
            continue
        sub = graphql.get_named_type(f.type)
        if isinstance(sub, graphql.GraphQLScalarType | graphql.GraphQLEnumType):
            parts.append(name)
        elif depth > 0 and (name in ("edges", "node") or depth > 1):
            inner = selection(f.type, depth - 1)
            if inner:
                parts.append(f"{name} {inner}")
    return "{ " + " ".join(parts) + " }"


def document(
    root: str,
    field_name: str,
    fdef: graphql.GraphQLField,
    target: tuple[str, ...],
    pools: tuple[dict[str, str], dict[str, str]],
    at_target: Callable[[graphql.GraphQLNamedType], Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    variables: dict[str, Any] = {}
    decls, args = [], []
    for name, arg in fdef.args.items():
        if name != target[0] and not graphql.is_required_argument(arg):
            continue
        kind_name = field_name if name == "id" else name
        variables[name] = _value(
            arg.type, (name,), target, pools, kind_name, required_only=False, at_target=at_target
        )
        decls.append(f"${name}: {arg.type}")
        args.append(f"{name}: ${name}")
    keyword = root.lower()
    head = f"{keyword} Sweep({', '.join(decls)})" if decls else f"{keyword} Sweep"
    call = f"{field_name}({', '.join(args)})" if args else field_name
    return f"{head} {{ {call} {selection(fdef.type)} }}", variables


def _empty(value: Any) -> bool:
    if value is None or value == [] or value is False:
        return True
    if isinstance(value, dict) and "edges" in value:
        return value["edges"] == []
    return False


def _codes(body: dict[str, Any]) -> list[str | None]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


@pytest.fixture
async def tenants(gql: GQL) -> tuple[Team, dict[str, str], Seeded]:
    """A (admin team with its own resources) and B (seeded, recognisable)."""
    victim = await seed_tenant(gql)
    attacker_world = await seed_tenant(gql, canary="attacker" + uuid.uuid4().hex[:6])
    return attacker_world.team, attacker_world.ids, victim


async def test_every_operation_with_another_tenants_ids(
    gql: GQL, tenants: tuple[Team, dict[str, str], Seeded]
) -> None:
    from server.graphql_schema import schema

    attacker, mine, victim = tenants
    theirs = victim.ids
    gschema = schema._schema
    uncovered: list[str] = []
    leaks: list[str] = []
    tried = 0
    for root in ("Query", "Mutation", "Subscription"):
        root_type = gschema.get_type(root)
        assert isinstance(root_type, graphql.GraphQLObjectType)
        for field_name, fdef in root_type.fields.items():
            sites = id_sites(field_name, fdef)
            if not sites:
                if field_name not in NO_ID_OPERATIONS[root]:
                    uncovered.append(
                        f"{root}.{field_name} takes no ID: add it to NO_ID_OPERATIONS once "
                        "you are sure it cannot reach another tenant's data"
                    )
                continue
            for path, kind_name in sites:
                kind = kind_of(kind_name)
                if kind is None or kind not in theirs:
                    uncovered.append(
                        f"{root}.{field_name} argument {'.'.join(path)}: unknown id kind "
                        f"{kind_name!r}; add a word for it to KIND_ALIASES and create one in "
                        "seed_tenant"
                    )
                    continue
                query, variables = document(root, field_name, fdef, path, (mine, theirs))
                tried += 1
                where = f"{root}.{field_name}({'.'.join(path)}={kind})"
                if root == "Subscription":
                    problem = await _subscription(gql, attacker, query, variables, field_name)
                else:
                    body = await gql.raw(query, variables, token=attacker.token)
                    problem = _judge(body, field_name, path, theirs, victim.canary)
                if problem:
                    leaks.append(f"{where}: {problem}")
    assert not uncovered, "operations without cross-tenant coverage:\n" + "\n".join(uncovered)
    assert not leaks, "cross-tenant answers:\n" + "\n".join(leaks)
    assert tried > 50
    await _victim_unchanged(gql, victim)
    await _own_ids_are_found(gql, attacker, mine)


async def _own_ids_are_found(gql: GQL, attacker: Team, mine: dict[str, str]) -> None:
    """Control: the same generated reads with the caller's own ids find them, so the
    NOT_FOUNDs above come from isolation, not from a wrong id kind or a broken document."""
    from server.graphql_schema import schema

    query_type = schema._schema.query_type
    assert query_type is not None
    found = 0
    for field_name, fdef in query_type.fields.items():
        if list(fdef.args) != ["id"] or kind_of(field_name) not in mine:
            continue
        query, variables = document("Query", field_name, fdef, ("id",), (mine, mine))
        body = await gql.raw(query, variables, token=attacker.token)
        assert not body.get("errors") and body["data"][field_name], (field_name, body)
        found += 1
    assert found >= len(STILL_THERE), found


def _judge(
    body: dict[str, Any],
    field_name: str,
    path: tuple[str, ...],
    theirs: dict[str, str],
    canary: str,
) -> str | None:
    text = json.dumps(body)
    if canary in text:
        return f"B's data in the answer: {text[:400]}"
    data = json.dumps(body.get("data"))
    if any(victim_id in data for victim_id in theirs.values()):
        return f"B's id in the data: {text[:400]}"
    codes = _codes(body)
    if codes:
        allowed = {"NOT_FOUND"} if len(path) == 1 else {"NOT_FOUND", "BAD_USER_INPUT"}
        if set(codes) <= allowed:
            return None
        return f"codes {codes}: {text[:400]}"
    value = (body.get("data") or {}).get(field_name)
    if _empty(value):
        return None
    return f"succeeded: {text[:400]}"


async def _subscription(
    gql: GQL, attacker: Team, query: str, variables: dict[str, Any], field_name: str
) -> str | None:
    async with gql.connect_ws() as ws:
        ack = await init(ws, {"authorization": f"Bearer {attacker.token}"})
        assert ack["type"] == "connection_ack", ack
        await subscribe(ws, "1", query, variables)
        msg = await recv(ws)
    if msg["type"] == "error":
        codes = [e.get("extensions", {}).get("code") for e in msg["payload"]]
        return None if set(codes) <= {"NOT_FOUND"} else f"error {msg}"
    if msg["type"] == "next":
        payload = msg["payload"]
        if _codes(payload) and set(_codes(payload)) <= {"NOT_FOUND"}:
            return None
        return f"delivered {json.dumps(payload)[:400]}"
    return None if msg["type"] == "complete" else f"unexpected {msg}"


async def _victim_unchanged(gql: GQL, victim: Seeded) -> None:
    tok = victim.team.token
    for query_field, kind in STILL_THERE.items():
        body = await gql.raw(
            f"query Q($id: ID!) {{ {query_field}(id: $id) {{ id }} }}",
            {"id": victim.ids[kind]},
            token=tok,
        )
        assert (body.get("data") or {}).get(query_field) == {"id": victim.ids[kind]}, body
    users = await gql.ok("Users", token=tok)
    member = [e["node"] for e in users["users"]["edges"] if e["node"]["id"] == victim.ids["user"]]
    assert member and member[0]["role"] == "MEMBER" and member[0]["active"] is True, member
    keys = (await gql.ok("ApiKeys", token=tok))["apiKeys"]
    assert [k["revokedAt"] for k in keys if k["id"] == victim.ids["apikey"]] == [None], keys

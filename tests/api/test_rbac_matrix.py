"""Every operation × every role, checked against the policy table in domain.rbac."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from domain.rbac import POLICY, Action, Role
from tests.conftest import PASSWORD, Team, member_token, register
from tests.support import builders as b
from tests.support.client import GQL, error_code


@dataclass(frozen=True)
class Case:
    operation: str
    action: Action | None  # None: any authenticated caller
    variables: Callable[[dict[str, Any]], dict[str, Any]] = lambda _: {}


MISSING = str(uuid.UUID(int=0))


def _n() -> str:
    return f"rbac-{uuid.uuid4().hex[:10]}"


Variables = Callable[[dict[str, Any]], dict[str, Any]]


def _resource(
    kind: str,
    key: str,
    create: Variables,
    update: Variables,
    *,
    write: Action = Action.WRITE,
    updated: str | None = None,
) -> list[Case]:
    """Listing, reading, creating, updating and deleting one kind of resource; `key` names
    the fixture's resource that is read (and updated, unless `updated` names another)."""
    return [
        Case(f"{kind}s", Action.READ),
        Case(kind, Action.READ, lambda f: {"id": f["w"][key]}),
        Case(f"Create{kind}", write, lambda f: {"input": create(f)}),
        Case(f"Update{kind}", write, lambda f: {"id": f["w"][updated or key], "input": update(f)}),
        Case(f"Delete{kind}", write, lambda _: {"id": MISSING}),
    ]


CASES: list[Case] = [
    Case("Me", None),
    Case("CurrentTenant", None),
    Case("Users", Action.READ),
    Case("ApiKeys", Action.MANAGE_API_KEYS),
    Case(
        "CreateUser",
        Action.MANAGE_USERS,
        lambda _: {
            "input": {
                "email": f"m{uuid.uuid4().hex[:8]}@example.com",
                "password": PASSWORD,
                "role": "VIEWER",
            }
        },
    ),
    Case("UpdateUserRole", Action.MANAGE_USERS, lambda f: {"id": f["viewer_id"], "role": "VIEWER"}),
    Case("DeactivateUser", Action.MANAGE_USERS, lambda _: {"id": MISSING}),
    Case("CreateApiKey", Action.MANAGE_API_KEYS, lambda _: {"name": "k", "role": "VIEWER"}),
    Case("RevokeApiKey", Action.MANAGE_API_KEYS, lambda _: {"id": MISSING}),
    Case("AuditLog", Action.READ_AUDIT_LOG, lambda _: {"first": 5}),
    *_resource(
        "LlmProvider",
        "provider",
        lambda _: {"name": _n(), "provider": "openai", "model": "m"},
        lambda _: {"name": _n(), "provider": "openai", "model": "m"},
        write=Action.MANAGE_PROVIDERS,
    ),
    Case("TestLlmProvider", Action.MANAGE_PROVIDERS, lambda _: {"id": MISSING}),
    Case("Usage", Action.READ, lambda _: {"days": 7}),
    *_resource(
        "Tool",
        "tool",
        lambda _: {
            "name": _n(),
            "description": "d",
            "kind": "BUILTIN",
            "config": {"builtin": "file_read"},
        },
        lambda _: {
            "name": _n(),
            "description": "d",
            "kind": "CUSTOM_PYTHON",
            "config": {"code": b.PY_CODE},
        },
    ),
    Case("ValidateTool", Action.RUN, lambda f: {"id": f["w"]["tool"], "sampleInput": {"x": 1}}),
    *_resource(
        "Agent",
        "agent",
        lambda _: {"name": _n(), "role": "r", "goal": "g", "backstory": "b"},
        lambda _: {"name": _n(), "role": "r", "goal": "g", "backstory": "b"},
        updated="agent2",
    ),
    *_resource(
        "Crew",
        "crew",
        lambda f: {
            "name": _n(),
            "agentIds": [f["w"]["agent2"]],
            "tasks": [{"description": "d", "expectedOutput": "e", "agentId": f["w"]["agent2"]}],
        },
        lambda f: {
            "name": _n(),
            "agentIds": [f["w"]["agent"]],
            "tasks": [{"description": "d", "expectedOutput": "e", "agentId": f["w"]["agent"]}],
        },
    ),
    *_resource(
        "Flow",
        "flow",
        lambda f: {"name": _n(), **b.graph(f["w"]["agent"], f["w"]["crew"], f["w"]["tool"])},
        lambda f: {"name": _n(), **b.graph(f["w"]["agent"], f["w"]["crew"], f["w"]["tool"])},
    ),
    Case("FlowVersion", Action.READ, lambda f: {"id": f["w"]["flow"], "version": 1}),
    Case("ExportFlow", Action.READ, lambda f: {"id": f["w"]["flow"]}),
    Case("FlowTemplates", Action.READ),
    Case("ImportFlow", Action.WRITE, lambda _: {"document": {"format": "crewgraph.flow/v0"}}),
    Case(
        "ValidateFlow",
        Action.READ,
        lambda f: b.graph(f["w"]["agent"], f["w"]["crew"], f["w"]["tool"]),
    ),
    Case("Executions", Action.READ),
    Case("Execution", Action.READ, lambda _: {"id": MISSING}),
    Case("ExecuteFlow", Action.RUN, lambda f: {"id": f["w"]["flow"], "inputs": {"topic": "x"}}),
    Case("TestCrew", Action.RUN, lambda f: {"id": f["w"]["crew"], "inputs": {"topic": "x"}}),
    Case("CancelExecution", Action.RUN, lambda _: {"id": MISSING}),
    Case(
        "ResolveApproval",
        Action.RUN,
        lambda _: {"executionId": MISSING, "nodeId": "review", "approved": True},
    ),
    Case("ChatSessions", Action.READ),
    Case("ChatSession", Action.READ, lambda _: {"id": MISSING}),
    Case(
        "CreateChatSession",
        Action.WRITE,
        lambda f: {"input": {"llmProviderId": f["w"]["provider"]}},
    ),
    Case("SendChatMessage", Action.WRITE, lambda _: {"sessionId": MISSING, "content": "hi"}),
    Case("CancelChatReply", Action.WRITE, lambda _: {"sessionId": MISSING}),
    Case("DeleteChatSession", Action.WRITE, lambda _: {"id": MISSING}),
    Case("Schedules", Action.READ),
    Case("Schedule", Action.READ, lambda _: {"id": MISSING}),
    Case(
        "CreateSchedule",
        Action.WRITE,
        lambda f: {"input": {"flowId": f["w"]["flow"], "cron": "0 0 1 1 *"}},
    ),
    Case(
        "UpdateSchedule",
        Action.WRITE,
        lambda f: {"id": MISSING, "input": {"flowId": f["w"]["flow"], "cron": "0 0 1 1 *"}},
    ),
    Case("DeleteSchedule", Action.WRITE, lambda _: {"id": MISSING}),
    Case("Webhooks", Action.MANAGE_WEBHOOKS),
    Case("Webhook", Action.MANAGE_WEBHOOKS, lambda _: {"id": MISSING}),
    Case(
        "CreateWebhook",
        Action.MANAGE_WEBHOOKS,
        lambda _: {"input": {"url": "http://127.0.0.1:9/hook", "events": ["EXECUTION_FAILED"]}},
    ),
    Case("RotateWebhookSecret", Action.MANAGE_WEBHOOKS, lambda _: {"id": MISSING}),
    Case(
        "UpdateWebhook",
        Action.MANAGE_WEBHOOKS,
        lambda _: {
            "id": MISSING,
            "input": {"url": "http://127.0.0.1:9/hook", "events": ["EXECUTION_FAILED"]},
        },
    ),
    Case("DeleteWebhook", Action.MANAGE_WEBHOOKS, lambda _: {"id": MISSING}),
]


@pytest.fixture
async def tokens(gql: GQL) -> dict[str, Any]:
    team: Team = await register(gql)
    viewer_email = f"viewer-{uuid.uuid4().hex[:8]}@example.com"
    created = await gql.ok(
        "CreateUser",
        {"input": {"email": viewer_email, "password": PASSWORD, "role": "VIEWER"}},
        token=team.token,
    )
    viewer = (
        await gql.ok(
            "Login",
            {"input": {"email": viewer_email, "password": PASSWORD, "tenantSlug": team.slug}},
        )
    )["login"]["accessToken"]
    return {
        "ADMIN": team.token,
        "MEMBER": await member_token(gql, team, "MEMBER"),
        "VIEWER": viewer,
        "viewer_id": created["createUser"]["id"],
        "w": {k: v["id"] for k, v in (await b.world(gql, team.token)).items()},
    }


async def test_every_operation_for_every_role(gql: GQL, tokens: dict[str, Any]) -> None:
    failures = []
    for case in CASES:
        for role in Role:
            allowed = case.action is None or role.at_least(POLICY[case.action])
            body = await gql.op(case.operation, case.variables(tokens), token=tokens[role.value])
            code = error_code(body)
            if allowed and code in ("FORBIDDEN", "UNAUTHENTICATED"):
                failures.append(f"{case.operation} as {role}: expected allowed, got {code}")
            if not allowed and code != "FORBIDDEN":
                failures.append(
                    f"{case.operation} as {role}: expected FORBIDDEN, got {code or 'data'}"
                )
    assert not failures, "\n".join(failures)


def test_policy_covers_every_action() -> None:
    assert set(POLICY) == set(Action)
    assert Role.ADMIN.at_least(Role.MEMBER) and Role.MEMBER.at_least(Role.VIEWER)
    assert not Role.VIEWER.at_least(Role.MEMBER)


def test_matrix_covers_every_root_field() -> None:
    from server.graphql_schema import schema

    fields = {
        f.python_name
        for t in (schema.query, schema.mutation)
        for f in t.__strawberry_definition__.fields  # type: ignore[union-attr]
    }
    public = {"register", "login", "refresh_token", "logout"}
    from tests.support.client import op

    covered = set()
    for case in CASES:
        doc = op(case.operation)
        for name in fields:
            camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
            if (
                f" {camel}(" in doc
                or f" {camel} " in doc
                or f"{{ {camel}" in doc
                or f"  {camel}" in doc
            ):
                covered.add(name)
    missing = fields - public - covered
    assert not missing, f"root fields without an RBAC case: {sorted(missing)}"

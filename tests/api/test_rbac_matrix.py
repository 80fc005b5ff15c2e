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
    Case("LlmProviders", Action.READ),
    Case("LlmProvider", Action.READ, lambda f: {"id": f["w"]["provider"]}),
    Case(
        "CreateLlmProvider",
        Action.MANAGE_PROVIDERS,
        lambda _: {"input": {"name": _n(), "provider": "openai", "model": "m"}},
    ),
    Case(
        "UpdateLlmProvider",
        Action.MANAGE_PROVIDERS,
        lambda f: {
            "id": f["w"]["provider"],
            "input": {"name": _n(), "provider": "openai", "model": "m"},
        },
    ),
    Case("DeleteLlmProvider", Action.MANAGE_PROVIDERS, lambda _: {"id": MISSING}),
    Case("TestLlmProvider", Action.MANAGE_PROVIDERS, lambda _: {"id": MISSING}),
    Case("Usage", Action.READ, lambda _: {"days": 7}),
    Case("Tools", Action.READ),
    Case("Tool", Action.READ, lambda f: {"id": f["w"]["tool"]}),
    Case(
        "CreateTool",
        Action.WRITE,
        lambda _: {
            "input": {
                "name": _n(),
                "description": "d",
                "kind": "BUILTIN",
                "config": {"builtin": "file_read"},
            }
        },
    ),
    Case(
        "UpdateTool",
        Action.WRITE,
        lambda f: {
            "id": f["w"]["tool"],
            "input": {
                "name": _n(),
                "description": "d",
                "kind": "CUSTOM_PYTHON",
                "config": {"code": b.PY_CODE},
            },
        },
    ),
    Case("DeleteTool", Action.WRITE, lambda _: {"id": MISSING}),
    Case("ValidateTool", Action.RUN, lambda f: {"id": f["w"]["tool"], "sampleInput": {"x": 1}}),
    Case("Agents", Action.READ),
    Case("Agent", Action.READ, lambda f: {"id": f["w"]["agent"]}),
    Case(
        "CreateAgent",
        Action.WRITE,
        lambda _: {"input": {"name": _n(), "role": "r", "goal": "g", "backstory": "b"}},
    ),
    Case(
        "UpdateAgent",
        Action.WRITE,
        lambda f: {
            "id": f["w"]["agent2"],
            "input": {"name": _n(), "role": "r", "goal": "g", "backstory": "b"},
        },
    ),
    Case("DeleteAgent", Action.WRITE, lambda _: {"id": MISSING}),
    Case("Crews", Action.READ),
    Case("Crew", Action.READ, lambda f: {"id": f["w"]["crew"]}),
    Case(
        "CreateCrew",
        Action.WRITE,
        lambda f: {
            "input": {
                "name": _n(),
                "agentIds": [f["w"]["agent2"]],
                "tasks": [{"description": "d", "expectedOutput": "e", "agentId": f["w"]["agent2"]}],
            }
        },
    ),
    Case(
        "UpdateCrew",
        Action.WRITE,
        lambda f: {
            "id": f["w"]["crew"],
            "input": {
                "name": _n(),
                "agentIds": [f["w"]["agent"]],
                "tasks": [{"description": "d", "expectedOutput": "e", "agentId": f["w"]["agent"]}],
            },
        },
    ),
    Case("DeleteCrew", Action.WRITE, lambda _: {"id": MISSING}),
    Case("Flows", Action.READ),
    Case("Flow", Action.READ, lambda f: {"id": f["w"]["flow"]}),
    Case("FlowVersion", Action.READ, lambda f: {"id": f["w"]["flow"], "version": 1}),
    Case(
        "ValidateFlow",
        Action.READ,
        lambda f: b.graph(f["w"]["agent"], f["w"]["crew"], f["w"]["tool"]),
    ),
    Case(
        "CreateFlow",
        Action.WRITE,
        lambda f: {
            "input": {"name": _n(), **b.graph(f["w"]["agent"], f["w"]["crew"], f["w"]["tool"])}
        },
    ),
    Case(
        "UpdateFlow",
        Action.WRITE,
        lambda f: {
            "id": f["w"]["flow"],
            "input": {"name": _n(), **b.graph(f["w"]["agent"], f["w"]["crew"], f["w"]["tool"])},
        },
    ),
    Case("DeleteFlow", Action.WRITE, lambda _: {"id": MISSING}),
    Case("Executions", Action.READ),
    Case("Execution", Action.READ, lambda _: {"id": MISSING}),
    Case("ExecuteFlow", Action.RUN, lambda f: {"id": f["w"]["flow"], "inputs": {"topic": "x"}}),
    Case("TestCrew", Action.RUN, lambda f: {"id": f["w"]["crew"], "inputs": {"topic": "x"}}),
    Case("CancelExecution", Action.RUN, lambda _: {"id": MISSING}),
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

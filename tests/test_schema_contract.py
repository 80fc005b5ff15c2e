"""graphql/schema.graphql is the exported SDL, and it honours the core contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT.parent / "shared" / "tools" / "check_contract.py"

# Parts of ../shared/CONTRACT.graphql implemented so far; grows with each capability.
IMPLEMENTED = [
    "Query.me",
    "Query.tenant",
    "Query.users",
    "Mutation.register",
    "Mutation.login",
    "Mutation.refreshToken",
    "Mutation.logout",
    "Mutation.createUser",
    "Mutation.updateUserRole",
    "Mutation.deactivateUser",
    "Mutation.createApiKey",
    "Mutation.revokeApiKey",
    "User",
    "Tenant",
    "AuthPayload",
    "ApiKeyPayload",
    "UserConnection",
    "UserEdge",
    "PageInfo",
    "RegisterInput",
    "LoginInput",
    "CreateUserInput",
    # executions
    "ExecutionStatus",
    "NodeStatus",
    "ExecutionEventType",
    "NodeRun",
    "Execution",
    "ExecutionEvent",
    "ExecutionConnection",
    "ExecutionEdge",
    "Flow",
    "Query.executions",
    "Query.execution",
    "Mutation.executeFlow",
    "Mutation.testCrew",
    "Mutation.cancelExecution",
    "Subscription.executionEvents",
    "Subscription.executionUpdates",
]


def test_exported_schema_has_not_drifted() -> None:
    from schema import schema

    exported = (ROOT / "graphql" / "schema.graphql").read_text()
    assert exported == schema.as_str() + "\n", "run `make schema` and commit graphql/schema.graphql"


def test_contract_parts_implemented() -> None:
    if not CHECKER.exists():
        pytest.skip(f"contract checker not found at {CHECKER}")
    out = subprocess.run(
        [
            sys.executable,
            str(CHECKER),
            str(ROOT / "graphql" / "schema.graphql"),
            "--only",
            *IMPLEMENTED,
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_operation_document_validates() -> None:
    from graphql import parse, validate
    from schema import schema
    from tests.support.client import _documents

    gql_schema = schema._schema
    for name, doc in _documents().items():
        errors = validate(gql_schema, parse(doc))
        assert not errors, f"{name}: {errors}"

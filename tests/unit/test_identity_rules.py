"""Pure identity rules: roles, policy, input checks, slugs. No services."""

from __future__ import annotations

import pytest

from domain.auth import digest, is_uuid, new_secret, slugify
from domain.errors import BadUserInput, Forbidden
from domain.identity import Principal
from domain.rbac import POLICY, Action, Role, allows
from domain.tools import python_entrypoint_problem
from domain.validation import Checker, page_size


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("action", list(Action))
def test_policy_matrix(role: Role, action: Action) -> None:
    expected = {
        Role.VIEWER: {Action.READ},
        Role.MEMBER: {Action.READ, Action.WRITE, Action.RUN},
        Role.ADMIN: set(Action),
    }[role]
    assert allows(role, action) is (action in expected)
    principal = Principal("t", "tenant_000000000000", role, user_id="u")
    if action in expected:
        principal.require(action)
    else:
        with pytest.raises(Forbidden, match=role.value):
            principal.require(action)
    assert set(POLICY) == set(Action)


def test_checker_collects_every_field() -> None:
    check = Checker("input.")
    check.text("name", "  ")
    check.email("email", "not-an-email")
    check.password("password", "short")
    with pytest.raises(BadUserInput) as err:
        check.raise_if_any()
    assert set(err.value.fields) == {"input.name", "input.email", "input.password"}
    assert err.value.extensions["fields"] == err.value.fields


def test_email_is_normalized() -> None:
    check = Checker()
    assert check.email("email", " Ada@Example.COM ") == "ada@example.com"
    assert not check.errors


@pytest.mark.parametrize(
    ("first", "ok"), [(None, True), (1, True), (100, True), (0, False), (101, False), (-5, False)]
)
def test_page_size(first: int | None, ok: bool) -> None:
    if ok:
        assert 1 <= page_size(first) <= 100
    else:
        with pytest.raises(BadUserInput):
            page_size(first)


def test_slugs_secrets_and_ids() -> None:
    assert slugify("Acme Research, Inc.") == "acme-research-inc"
    assert slugify("!!!") == "team"
    a, b = new_secret("cgk"), new_secret("cgk")
    assert a != b and a.startswith("cgk_") and len(a) > 40
    assert digest(a) == digest(a) != digest(b)
    assert is_uuid("7d444840-9dc0-11d1-b245-5ffdce74fad2") and not is_uuid("x") and not is_uuid("")


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("def run(input):\n    return input\n", None),
        ("async def run(data):\n    return data\n", None),
        ("def run(*args):\n    return 1\n", None),
        ("def run():\n    return 1\n", "must accept"),
        ("def helper(x):\n    return x\n", "top-level function run"),
        ("class X:\n    def run(self, x):\n        return x\n", "top-level function run"),
        ("def run(x):\n  return (\n", "syntax error at line"),
    ],
)
def test_python_entrypoint(code: str, problem: str | None) -> None:
    found = python_entrypoint_problem(code, "run")
    assert (found is None) if problem is None else (found is not None and problem in found)

"""validateTool: static checks, then a real dry run in the sandbox."""

from __future__ import annotations

from tests.conftest import Team
from tests.support import builders as b
from tests.support.client import GQL, error_code

GOOD = "def run(input):\n    print('hello from the sandbox')\n    return {'sum': input['a'] + input['b']}\n"


async def _tool(gql: GQL, team: Team, code: str = GOOD) -> dict:
    schema = {
        "type": "object",
        "required": ["a", "b"],
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    }
    return await b.tool(gql, team.token, config={"code": code}, inputSchema=schema)


async def test_good_dry_run_returns_output_and_duration(gql: GQL, team: Team) -> None:
    tool = await _tool(gql, team)
    result = (
        await gql.ok(
            "ValidateTool", {"id": tool["id"], "sampleInput": {"a": 2, "b": 3}}, token=team.token
        )
    )["validateTool"]
    assert result["errors"] == []
    assert result["valid"] is True
    assert result["output"] == {"sum": 5}
    assert isinstance(result["durationMs"], int) and result["durationMs"] >= 0


async def test_syntax_error_in_an_unsaved_edit_is_reported(gql: GQL, team: Team) -> None:
    tool = await _tool(gql, team)
    draft = {
        "name": tool["name"],
        "description": "d",
        "kind": "CUSTOM_PYTHON",
        "config": {"code": "def run(input):\n    return (\n"},
    }
    result = (
        await gql.ok(
            "ValidateTool",
            {"id": tool["id"], "sampleInput": {"a": 1, "b": 1}, "input": draft},
            token=team.token,
        )
    )["validateTool"]
    assert result["valid"] is False
    assert any("syntax error" in e for e in result["errors"]), result
    assert result["output"] is None
    stored = (await gql.ok("Tool", {"id": tool["id"]}, token=team.token))["tool"]
    assert stored["config"]["code"] == GOOD and stored["version"] == 1


async def test_sample_input_is_checked_against_the_schema(gql: GQL, team: Team) -> None:
    tool = await _tool(gql, team)
    result = (
        await gql.ok(
            "ValidateTool", {"id": tool["id"], "sampleInput": {"a": "x"}}, token=team.token
        )
    )["validateTool"]
    assert result["valid"] is False
    assert any("'b' is a required property" in e for e in result["errors"]), result
    assert any("'x' is not of type 'number'" in e for e in result["errors"]), result
    assert result["durationMs"] is None  # nothing ran


async def test_runtime_exception_is_reported_with_traceback(gql: GQL, team: Team) -> None:
    tool = await _tool(gql, team, "def run(input):\n    return 1 / 0\n")
    result = (
        await gql.ok(
            "ValidateTool", {"id": tool["id"], "sampleInput": {"a": 1, "b": 2}}, token=team.token
        )
    )["validateTool"]
    assert result["valid"] is False
    assert any("ZeroDivisionError" in e for e in result["errors"]), result


async def test_builtin_json_transform_runs(gql: GQL, team: Team) -> None:
    tool = await b.tool(
        gql, team.token, kind="BUILTIN", config={"builtin": "json_transform"}, inputSchema=None
    )
    sample = {"data": {"items": [{"name": "first"}]}, "expression": "data.items[0].name"}
    result = (
        await gql.ok("ValidateTool", {"id": tool["id"], "sampleInput": sample}, token=team.token)
    )["validateTool"]
    assert result == {
        "valid": True,
        "errors": [],
        "output": "first",
        "durationMs": result["durationMs"],
    }


async def test_validate_tool_is_tenant_scoped_and_role_checked(
    gql: GQL, team: Team, other_team: Team
) -> None:
    theirs = await _tool(gql, other_team)
    body = await gql.op(
        "ValidateTool", {"id": theirs["id"], "sampleInput": {"a": 1, "b": 2}}, token=team.token
    )
    assert error_code(body) == "NOT_FOUND"

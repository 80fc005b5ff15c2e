"""Every shipped template imports into a new team and runs to COMPLETED, offline, on the
`Local (scripted)` provider every team starts with. Nothing is mocked."""

from __future__ import annotations

from typing import Any

from tests.conftest import Team, member_token
from tests.support.client import GQL, error_code
from tests.support.flows import execute, wait_status

# The first AGENT / CREW node of a test session imports CrewAI (10-30 s on a busy machine).
FIRST_RUN_TIMEOUT = 150.0
RESOLVE = """mutation ($e: ID!, $n: String!, $input: JSON, $c: String) {
  resolveApproval(executionId: $e, nodeId: $n, approved: true, input: $input, comment: $c) {
    id
  }
}"""


def _sample_inputs(document: dict[str, Any]) -> dict[str, Any]:
    """A value for each required input of the template's INPUT nodes."""
    samples = {"string": "Our checkout page is down for every customer", "number": 3}
    inputs: dict[str, Any] = {}
    for node in document["flow"]["nodes"]:
        if node["kind"] != "INPUT":
            continue
        schema = (node["config"] or {}).get("schema") or {}
        for key in schema.get("required", []):
            inputs[key] = samples[schema["properties"][key]["type"]]
    return inputs


async def test_templates_are_listed_for_every_role(gql: GQL, team: Team) -> None:
    viewer = await member_token(gql, team, "VIEWER")
    templates = (await gql.ok("FlowTemplates", token=viewer))["flowTemplates"]
    assert len(templates) >= 3
    for t in templates:
        assert t["id"] and t["name"] == t["document"]["flow"]["name"] and t["description"]
        assert t["document"]["format"] == "crewgraph.flow/v1"
        assert [p["name"] for p in t["document"]["providers"]] == ["Local (scripted)"]
    kinds = {n["kind"] for t in templates for n in t["document"]["flow"]["nodes"]}
    assert {"CREW", "CONDITION", "APPROVAL"} <= kinds
    # Viewers read templates but cannot import them.
    body = await gql.op("ImportFlow", {"document": templates[0]["document"]}, token=viewer)
    assert error_code(body) == "FORBIDDEN"


async def test_every_template_imports_and_runs_to_completion(gql: GQL, team: Team) -> None:
    templates = (await gql.ok("FlowTemplates", token=team.token))["flowTemplates"]
    runs = []
    for t in templates:
        body = await gql.ok("ImportFlow", {"document": t["document"]}, token=team.token)
        imported = body["importFlow"]
        assert f"flow:{t['name']}" in imported["created"], imported
        assert imported["renamed"] == [] and imported["reused"] == []
        run = await execute(gql, team.token, imported["flow"]["id"], _sample_inputs(t["document"]))
        runs.append((t["id"], run["id"]))

    outputs = {}
    documents = {t["id"]: t["document"] for t in templates}
    for template_id, run_id in runs:
        for node in documents[template_id]["flow"]["nodes"]:
            if node["kind"] == "APPROVAL":
                # A person approves: the run waits for the answer, then goes on.
                await wait_status(gql, team.token, run_id, {"WAITING"}, timeout=FIRST_RUN_TIMEOUT)
                await gql.ok(
                    RESOLVE,
                    {
                        "e": run_id,
                        "n": node["id"],
                        "input": {"note": "Ship it"},
                        "c": "Looks good",
                    },
                    token=team.token,
                )
        done = await wait_status(gql, team.token, run_id, timeout=FIRST_RUN_TIMEOUT)
        assert done["status"] == "COMPLETED", (template_id, done)
        assert done["outputs"], (template_id, done)
        outputs[template_id] = done["outputs"]

    # Exactly one branch of the router answered.
    assert len(outputs["classify-and-route"]) == 1
    assert set(outputs["classify-and-route"]) <= {"urgent", "normal"}
    packaged = outputs["draft-edit-package"]["out"]
    assert isinstance(packaged["words"], int) and packaged["words"] > 0
    assert packaged["body"]

    # A second import of the same template is a name clash (FAIL by default) ...
    body = await gql.op("ImportFlow", {"document": templates[0]["document"]}, token=team.token)
    assert error_code(body) == "CONFLICT"
    # ... and RENAME gives a second, independent copy.
    body = await gql.ok(
        "ImportFlow",
        {"document": templates[0]["document"], "onConflict": "RENAME"},
        token=team.token,
    )
    assert body["importFlow"]["flow"]["name"] == f"{templates[0]['name']} (2)"

"""graphql/schema.graphql is the exported SDL, and it honours the core contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # the source of truth, when it sits next to the checkout
VENDORED = ROOT / "shared"  # its copy, so a clean clone checks the contract too
CHECKER = VENDORED / "tools" / "check_contract.py"
CORE = VENDORED / "CONTRACT.graphql"
CONTRACTS = VENDORED / "contract"

# Parts of ../shared/CONTRACT.graphql (a type, or Type.field) not implemented yet; everything
# else is checked. Remove an entry when it lands: the test fails while a listed part exists.
NOT_IMPLEMENTED: set[str] = set()

# Capability files under ../shared/contract/ checked too (with --with, beside the core),
# each with its parts not implemented yet. Add a file when its capability starts landing.
CAPABILITIES: dict[str, set[str]] = {
    "ai-runtime.graphql": set(),
    "approvals.graphql": set(),
    "chat.graphql": set(),
    "automation.graphql": set(),
    "tenancy.graphql": set(),
}

_PROBLEM = re.compile(r"^(?:type |enum )?(?P<type>\w+)(?:\.(?P<field>\w+))?[:(]")


def _contract_problems(*extensions: Path) -> dict[str, list[str]]:
    """The checker's complaints about graphql/schema.graphql, by contract part."""
    command = [
        sys.executable,
        str(CHECKER),
        str(ROOT / "graphql" / "schema.graphql"),
        "--contract",
        str(CORE),
    ]
    if extensions:
        command += ["--with", *map(str, extensions)]
    out = subprocess.run(command, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert out.returncode in (0, 1) and lines and " checked, " in lines[-1], out.stdout + out.stderr
    problems: dict[str, list[str]] = {}
    for line in lines[:-1]:
        match = _PROBLEM.match(line)
        assert match, f"unexpected checker output: {line}"
        part = match["type"] + (f".{match['field']}" if match["field"] else "")
        problems.setdefault(part, []).append(line)
    return problems


def test_exported_schema_has_not_drifted() -> None:
    from server.graphql_schema import schema

    exported = (ROOT / "graphql" / "schema.graphql").read_text()
    assert exported == schema.as_str() + "\n", "run `make schema` and commit graphql/schema.graphql"


@pytest.mark.parametrize("capability", ["core", *sorted(CAPABILITIES)])
def test_schema_honours_the_contract(capability: str) -> None:
    if capability == "core":
        problems, missing = _contract_problems(), NOT_IMPLEMENTED
    else:
        problems = _contract_problems(CONTRACTS / capability)
        missing = NOT_IMPLEMENTED | CAPABILITIES[capability]

    def expected(part: str) -> bool:
        return part in missing or part.split(".")[0] in missing

    drifted = [line for part, lines in problems.items() if not expected(part) for line in lines]
    assert not drifted, "the schema departs from the contract:\n" + "\n".join(drifted)
    landed = sorted(
        part for part in missing if not any(p == part or p.startswith(part + ".") for p in problems)
    )
    assert not landed, f"implemented now, remove from the not-implemented list: {landed}"


def test_vendored_contract_matches_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"no {SHARED} next to this checkout: the vendored copy is all there is")
    pairs = [
        (SHARED / "CONTRACT.graphql", CORE),
        (SHARED / "tools" / "check_contract.py", CHECKER),
        *((f, CONTRACTS / f.name) for f in sorted((SHARED / "contract").glob("*.graphql"))),
    ]
    stale = [str(copy) for source, copy in pairs if source.read_bytes() != _read(copy)]
    assert not stale, f"copy ../shared again, these differ: {stale}"


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def test_every_operation_document_validates() -> None:
    from graphql import parse, validate
    from server.graphql_schema import schema
    from tests.support.client import _documents

    gql_schema = schema._schema
    for name, doc in _documents().items():
        errors = validate(gql_schema, parse(doc))
        assert not errors, f"{name}: {errors}"

"""Tools: builtin, custom Python (run in the sandbox) and Docker images."""

from __future__ import annotations

import ast
import enum
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.audit import NO_AUDIT, TOOL_CREATED, TOOL_DELETED, TOOL_UPDATED, AuditRecorder
from domain.identity import Principal
from domain.json_schema import schema_problems
from domain.ports import Page, TenantUnitOfWork, TenantUnitOfWorkFactory
from domain.rbac import Action
from domain.resources import ResourceService
from domain.validation import MAX_TEXT, Checker


class ToolKind(enum.StrEnum):
    BUILTIN = "BUILTIN"
    CUSTOM_PYTHON = "CUSTOM_PYTHON"
    DOCKER = "DOCKER"


# The curated builtins; each works offline or says what it needs.
BUILTINS: dict[str, str] = {
    "json_transform": "Evaluate a JMESPath-like template over the JSON input (no network).",
    "file_read": "Read a file from the execution's scratch directory.",
    "file_write": "Write a file into the execution's scratch directory.",
    "http_request": "HTTP request; refused unless the tenant allows network access.",
    "directory_read": "List the files of the execution's scratch directory (agents).",
}

# Tools agents commonly ask for that need an outside service and its key; none is
# configured for tenants, so they are refused when written, saying what they would need.
NEEDS_SERVICE: dict[str, str] = {
    "web_search": "a web search API key (e.g. SERPER_API_KEY or BRAVE_API_KEY)",
    "serper_search": "a Serper API key (SERPER_API_KEY)",
    "website_search": "a web search API key and an embeddings provider",
    "scrape_website": "network access for the tenant's tools",
    "youtube_search": "a YouTube Data API key",
    "github_search": "a GitHub token (GITHUB_TOKEN)",
}

MAX_CODE = 100_000
_IMAGE_RE = re.compile(
    r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_LIMIT_KEYS = {"timeoutSeconds": (1, 3600), "memoryMb": (16, 8192), "cpuFraction": (0.05, 4.0)}


@dataclass(slots=True)
class Tool:
    id: str
    name: str
    description: str
    kind: ToolKind
    config: dict[str, Any]
    input_schema: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ToolInput:
    name: str
    description: str
    kind: ToolKind
    config: Any
    input_schema: Any = None


def python_entrypoint_problem(code: str, entrypoint: str) -> str | None:
    """Why this code cannot serve as a tool, or None. Parses only; never runs it."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entrypoint:
            args = node.args
            positional = len(args.posonlyargs) + len(args.args)
            if positional < 1 and args.vararg is None:
                return f"function {entrypoint}() must accept the input as its first argument"
            return None
    return f"code must define a top-level function {entrypoint}(input)"


def check_input_schema(check: Checker, field: str, schema: Any) -> None:
    if schema is None:
        return
    if not isinstance(schema, dict):
        check.fail(field, "must be a JSON Schema object")
        return
    problems = schema_problems(schema)
    if problems:
        check.fail(field, "; ".join(problems))


def _check_limits(check: Checker, config: dict[str, Any]) -> None:
    for key, (low, high) in _LIMIT_KEYS.items():
        if key in config:
            value = config[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not low <= value <= high
            ):
                check.fail(f"config.{key}", f"must be a number between {low} and {high}")


def image_not_allowed(allowed: Collection[str]) -> str:
    shown = ", ".join(sorted(allowed)[:10]) or "none"
    return f"is not an allowed image on this deployment (allowed: {shown})"


def check_config(
    check: Checker, kind: ToolKind, config: Any, *, allowed_images: Collection[str] | None = None
) -> None:
    """``allowed_images``: the operator's allow-list for DOCKER tools (None = any)."""
    if not isinstance(config, dict):
        check.fail("config", "must be a JSON object")
        return
    if kind is ToolKind.BUILTIN:
        name = config.get("builtin")
        if isinstance(name, str) and name in NEEDS_SERVICE:
            check.fail(
                "config.builtin",
                f"the {name} tool needs {NEEDS_SERVICE[name]}, which is not configured "
                "for this tenant",
            )
        elif name not in BUILTINS:
            check.fail("config.builtin", f"must be one of {', '.join(sorted(BUILTINS))}")
    elif kind is ToolKind.CUSTOM_PYTHON:
        code = config.get("code")
        entry = config.get("entrypoint", "run")
        if not isinstance(entry, str) or not entry.isidentifier():
            check.fail("config.entrypoint", "must be a Python identifier")
        elif not isinstance(code, str) or not code.strip():
            check.fail("config.code", "must be Python source code")
        elif len(code) > MAX_CODE:
            check.fail("config.code", f"must be at most {MAX_CODE} characters")
        else:
            problem = python_entrypoint_problem(code, entry)
            if problem:
                check.fail("config.code", problem)
        _check_limits(check, config)
    elif kind is ToolKind.DOCKER:
        image = config.get("image")
        command = config.get("command")
        if not isinstance(image, str) or len(image) > 255 or not _IMAGE_RE.match(image):
            check.fail("config.image", "must be a Docker image reference like python:3.12-slim")
        elif allowed_images is not None and image not in allowed_images:
            check.fail("config.image", image_not_allowed(allowed_images))
        if (
            not isinstance(command, list)
            or not command
            or len(command) > 100
            or not all(isinstance(c, str) and 0 < len(c) <= 4096 for c in command)
        ):
            check.fail("config.command", "must be a non-empty list of strings")
        env = config.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) and isinstance(v, str)
            for k, v in env.items()
        ):
            check.fail("config.env", "must map variable names to strings")
        _check_limits(check, config)


def _validate(data: ToolInput, allowed_images: Collection[str] | None = None) -> ToolInput:
    check = Checker("input.")
    name = check.text("name", data.name) or ""
    description = check.text("description", data.description, max_len=MAX_TEXT) or ""
    check_config(check, data.kind, data.config, allowed_images=allowed_images)
    check_input_schema(check, "inputSchema", data.input_schema)
    check.raise_if_any()
    return ToolInput(name, description, data.kind, data.config, data.input_schema)


class ToolService(ResourceService[Tool]):
    kind = "tool"
    repo_attr = "tools"
    audit_created = TOOL_CREATED
    audit_updated = TOOL_UPDATED
    audit_deleted = TOOL_DELETED

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        allowed_images: Collection[str] | None = None,
        audit: AuditRecorder = NO_AUDIT,
    ) -> None:
        super().__init__(uow, audit)
        #: images DOCKER tools may use (the operator's allow-list); None = any
        self.allowed_images = None if allowed_images is None else frozenset(allowed_images)

    async def list(
        self, p: Principal, first: int, after: str | None, kind: ToolKind | None = None
    ) -> Page[Tool]:
        return await self._list(p, first, after, kind=kind)

    async def create(self, p: Principal, data: ToolInput) -> Tool:
        p.require(Action.WRITE)
        data = _validate(data, self.allowed_images)
        now = datetime.now(UTC)
        tool = Tool(
            str(uuid.uuid4()),
            data.name,
            data.description,
            data.kind,
            data.config,
            data.input_schema,
            1,
            now,
            now,
        )
        return await self._insert(p, tool)

    async def update(
        self, p: Principal, ident: str, data: ToolInput, expected_version: int | None = None
    ) -> Tool:
        p.require(Action.WRITE)
        data = _validate(data, self.allowed_images)

        async def change(_: TenantUnitOfWork, tool: Tool) -> None:
            tool.name, tool.description, tool.kind = data.name, data.description, data.kind
            tool.config, tool.input_schema = data.config, data.input_schema

        return await self._modify(p, ident, expected_version, change)

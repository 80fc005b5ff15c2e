"""Running tools: TOOL nodes, CrewAI agent tools and `validateTool` all come here.

User code (CUSTOM_PYTHON, DOCKER) only ever runs in the sandbox port; builtins are
curated host-side operations behind their own port (no user code)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from domain.errors import BadUserInput, DomainError, NotConfigured, NotFound
from domain.executions.ports import NodeContext
from domain.flows.model import FlowNode
from domain.identity import Principal
from domain.ports import TenantUnitOfWorkFactory
from domain.rbac import Action
from domain.resources import require_id
from domain.sandbox import Sandbox, SandboxLimits, SandboxRequest, SandboxResult
from domain.tools import Tool, ToolInput, ToolKind, check_config, check_input_schema
from domain.validation import Checker


class ToolFailed(DomainError):
    """The tool ran and failed (exit status, exception, limit): the node fails."""

    code = "TOOL_FAILED"


class BuiltinTools(Protocol):
    async def run(
        self, tenant_id: str, execution_id: str, name: str, input: Mapping[str, Any]
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    ok: bool
    output: Any
    error: str | None
    duration_ms: int
    logs: str = ""
    result: SandboxResult | None = None


@dataclass(frozen=True, slots=True)
class ToolValidationResult:
    valid: bool
    errors: tuple[str, ...]
    output: Any
    duration_ms: int | None


def input_problems(tool: Tool, data: Any) -> list[str]:
    if not isinstance(data, Mapping):
        return ["input must be a JSON object"]
    if not tool.input_schema:
        return []
    from jsonschema.validators import validator_for  # type: ignore[import-untyped]

    validator = validator_for(tool.input_schema)(tool.input_schema)
    return [
        f"input{''.join(f'[{p!r}]' for p in e.absolute_path)}: {e.message}"
        for e in sorted(validator.iter_errors(dict(data)), key=lambda e: list(e.absolute_path))[:20]
    ]


def _limits(tool: Tool, ceiling: SandboxLimits) -> SandboxLimits:
    cfg = tool.config
    wanted = SandboxLimits(
        memory_mb=int(cfg.get("memoryMb", ceiling.memory_mb)),
        cpu_fraction=float(cfg.get("cpuFraction", ceiling.cpu_fraction)),
        timeout_seconds=float(cfg.get("timeoutSeconds", ceiling.timeout_seconds)),
    )
    return wanted.clamp(ceiling)


def _describe(result: SandboxResult) -> str:
    if result.timed_out:
        return f"tool timed out ({result.error or 'wall-clock limit'})"
    if result.oom_killed:
        return "tool ran out of memory and was killed"
    if result.truncated:
        return result.error or "tool output exceeded the size limit"
    return result.error or f"tool exited with status {result.exit_code}"


class ToolRunner:
    def __init__(
        self,
        sandbox: Sandbox | None,
        builtins: BuiltinTools | None,
        ceiling: SandboxLimits | None = None,
    ) -> None:
        self._sandbox = sandbox
        self._builtins = builtins
        self.ceiling = ceiling or SandboxLimits()

    async def run(
        self, tenant_id: str, tool: Tool, data: Mapping[str, Any], execution_id: str
    ) -> ToolOutcome:
        started = time.monotonic()
        if tool.kind is ToolKind.BUILTIN:
            if self._builtins is None:
                raise NotConfigured("builtin tools are not configured on this deployment")
            output = await self._builtins.run(tenant_id, execution_id, tool.config["builtin"], data)
            return ToolOutcome(True, output, None, int((time.monotonic() - started) * 1000))
        if self._sandbox is None:
            raise NotConfigured(
                "running user code needs a sandbox: no Docker engine answered and bubblewrap is "
                "not installed (see README, 'Tool sandbox')"
            )
        if tool.kind is ToolKind.CUSTOM_PYTHON:
            request = SandboxRequest(
                tenant_id=tenant_id,
                kind="python",
                code=tool.config["code"],
                entrypoint=tool.config.get("entrypoint", "run"),
                input=dict(data),
                limits=_limits(tool, self.ceiling),
                execution_id=execution_id,
            )
        else:
            request = SandboxRequest(
                tenant_id=tenant_id,
                kind="command",
                image=tool.config["image"],
                command=tuple(tool.config["command"]),
                env=dict(tool.config.get("env") or {}),
                input=dict(data),
                limits=_limits(tool, self.ceiling),
                execution_id=execution_id,
            )
        result = await self._sandbox.run(request)
        logs = (result.stdout + ("\n" if result.stdout and result.stderr else "") + result.stderr)[
            -4000:
        ]
        if not result.ok:
            return ToolOutcome(False, None, _describe(result), result.duration_ms, logs, result)
        return ToolOutcome(True, result.output, None, result.duration_ms, logs, result)


class ToolRunService:
    """`validateTool` and tool lookups for the executors, inside the caller's tenant."""

    def __init__(self, uow: TenantUnitOfWorkFactory, runner: ToolRunner) -> None:
        self._uow = uow
        self.runner = runner

    async def load(self, tenant_schema: str, tool_id: str) -> Tool:
        async with self._uow(tenant_schema) as uow:
            tool = await uow.tools.get(require_id("tool", tool_id))
        if tool is None:
            raise NotFound("tool", tool_id)
        return tool

    async def validate(
        self, p: Principal, tool_id: str, sample_input: Any, draft: ToolInput | None = None
    ) -> ToolValidationResult:
        """Static checks, then a real dry run. With `draft`, the unsaved config is
        checked in place of the stored one (an editor's "test before saving")."""
        p.require(Action.RUN)
        tool = await self.load(p.tenant_schema, tool_id)
        if draft is not None:
            tool = replace(
                tool,
                name=draft.name,
                description=draft.description,
                kind=ToolKind(draft.kind),
                config=draft.config if isinstance(draft.config, dict) else {},
                input_schema=draft.input_schema,
            )
        check = Checker()
        check_config(check, tool.kind, draft.config if draft is not None else tool.config)
        check_input_schema(check, "inputSchema", tool.input_schema)
        errors = [f"{k}: {v}" for k, v in check.errors.items()]
        if errors:
            return ToolValidationResult(False, tuple(errors), None, None)
        data = {} if sample_input is None else sample_input
        errors += input_problems(tool, data)
        if errors:
            return ToolValidationResult(False, tuple(errors), None, None)
        from domain.sandbox import new_execution_id

        try:
            outcome = await self.runner.run(
                p.tenant_id, tool, data, f"validate-{new_execution_id()}"
            )
        except NotConfigured as exc:
            return ToolValidationResult(False, (exc.message,), None, None)
        except BadUserInput as exc:
            return ToolValidationResult(
                False, (exc.message, *(f"{k}: {v}" for k, v in exc.fields.items())), None, None
            )
        if not outcome.ok:
            detail = f"{outcome.error}" + (
                f"\n{outcome.logs.strip()}" if outcome.logs.strip() else ""
            )
            return ToolValidationResult(False, (detail,), None, outcome.duration_ms)
        return ToolValidationResult(True, (), outcome.output, outcome.duration_ms)


class ToolNodeExecutor:
    """The engine's TOOL node: render `config.input` templates, check them against the
    tool's input schema, run the tool, log what it printed, return its JSON output."""

    def __init__(self, service: ToolRunService) -> None:
        self._service = service

    async def __call__(self, node: FlowNode, ctx: NodeContext, /) -> Any:
        from domain.executions.builtins import render_value_async

        tool = await self._service.load(ctx.tenant_schema, str(node.config.get("toolId", "")))
        data = await render_value_async(node.config.get("input") or {}, ctx.scope)
        problems = input_problems(tool, data)
        if problems:
            raise BadUserInput(f"tool {tool.name!r} input is invalid: {problems[0]}")
        outcome = await self._service.runner.run(ctx.tenant_id, tool, data, ctx.execution_id)
        if outcome.logs.strip():
            await ctx.log(f"tool {tool.name} output", stream=outcome.logs[-2000:])
        if not outcome.ok:
            raise ToolFailed(f"tool {tool.name!r} failed: {outcome.error}")
        return outcome.output

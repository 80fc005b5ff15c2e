"""Running tools: TOOL nodes, CrewAI agent tools and `validateTool` all come here.

User code (CUSTOM_PYTHON, DOCKER) only ever runs in the sandbox port; builtins are
curated host-side operations behind their own port (no user code)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from domain.errors import BadUserInput, DomainError, LimitExceeded, NotConfigured, NotFound
from domain.executions.ports import NodeContext
from domain.flows.model import FlowNode
from domain.identity import Principal
from domain.json_schema import SchemaUnusable, instance_errors
from domain.ports import TenantUnitOfWorkFactory
from domain.rbac import Action
from domain.resources import require_id
from domain.sandbox import Sandbox, SandboxLimits, SandboxRequest, SandboxResult
from domain.tools import (
    Tool,
    ToolInput,
    ToolKind,
    check_config,
    check_input_schema,
    image_not_allowed,
)
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
    try:
        errors = instance_errors(tool.input_schema, dict(data))
    except SchemaUnusable as exc:
        return [f"inputSchema: {exc.message}"]
    return [f"input{''.join(f'[{p!r}]' for p in path)}: {message}" for path, message in errors]


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


class SandboxSlots:
    """Caps the sandbox runs of this process that may be under way at once: in total and
    per tenant (each run is a container or a process tree with its own memory limit).

    A run past a cap waits up to ``wait`` seconds for a slot, then fails with
    LIMIT_EXCEEDED; ``wait=0`` refuses at once."""

    def __init__(self, total: int = 16, per_tenant: int = 4) -> None:
        if total < 1 or per_tenant < 1:
            raise ValueError("sandbox concurrency caps must be at least 1")
        self.total = total
        self.per_tenant = per_tenant
        self._running = 0
        self._per: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def running(self, tenant_id: str | None = None) -> int:
        return self._running if tenant_id is None else self._per.get(tenant_id, 0)

    def _free(self, tenant_id: str) -> bool:
        return self._running < self.total and self._per.get(tenant_id, 0) < self.per_tenant

    @contextlib.asynccontextmanager
    async def slot(self, tenant_id: str, wait: float) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        while not self._free(tenant_id):
            remaining = deadline - loop.time()
            if remaining <= 0:
                which = (
                    f"this team's limit of {self.per_tenant}"
                    if self._per.get(tenant_id, 0) >= self.per_tenant
                    else f"this server's limit of {self.total}"
                )
                raise LimitExceeded(
                    f"too many sandboxed tool runs at once ({which}); try again when one ends"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._running += 1
        self._per[tenant_id] = self._per.get(tenant_id, 0) + 1
        try:
            yield
        finally:
            self._running -= 1
            left = self._per.get(tenant_id, 1) - 1
            if left > 0:
                self._per[tenant_id] = left
            else:
                self._per.pop(tenant_id, None)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:  # each re-checks the caps
                if not waiter.done():
                    with contextlib.suppress(RuntimeError):  # its loop is gone
                        waiter.set_result(None)


#: How long a flow's tool run waits for a sandbox slot by default (validateTool: 0).
DEFAULT_SLOT_WAIT = 120.0


class ToolRunner:
    def __init__(
        self,
        sandbox: Sandbox | None,
        builtins: BuiltinTools | None,
        ceiling: SandboxLimits | None = None,
        *,
        slots: SandboxSlots | None = None,
        slot_wait: float = DEFAULT_SLOT_WAIT,
        allowed_images: Collection[str] | None = None,
    ) -> None:
        self._sandbox = sandbox
        self._builtins = builtins
        self.ceiling = ceiling or SandboxLimits()
        self.slots = slots or SandboxSlots()
        self.slot_wait = slot_wait
        #: images DOCKER tools may use; None = any (the operator's allow-list is set
        #: by the wiring place)
        self.allowed_images = None if allowed_images is None else frozenset(allowed_images)

    async def run(
        self,
        tenant_id: str,
        tool: Tool,
        data: Mapping[str, Any],
        execution_id: str,
        *,
        slot_wait: float | None = None,
    ) -> ToolOutcome:
        """Run ``tool``. Sandbox runs take a slot of :attr:`slots` first, waiting up to
        ``slot_wait`` seconds (default :attr:`slot_wait`) before LIMIT_EXCEEDED."""
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
            image = tool.config["image"]
            if self.allowed_images is not None and image not in self.allowed_images:
                raise BadUserInput(
                    f"image {image!r} is not allowed on this deployment",
                    {"config.image": image_not_allowed(self.allowed_images)},
                )
            request = SandboxRequest(
                tenant_id=tenant_id,
                kind="command",
                image=image,
                command=tuple(tool.config["command"]),
                env=dict(tool.config.get("env") or {}),
                input=dict(data),
                limits=_limits(tool, self.ceiling),
                execution_id=execution_id,
            )
        wait = self.slot_wait if slot_wait is None else slot_wait
        async with self.slots.slot(tenant_id, wait):
            result = await self._sandbox.run(request)
        logs = (result.stdout + ("\n" if result.stdout and result.stderr else "") + result.stderr)[
            -4000:
        ]
        if not result.ok:
            return ToolOutcome(False, None, _describe(result), result.duration_ms, logs, result)
        return ToolOutcome(True, result.output, None, result.duration_ms, logs, result)


class ToolRunService:
    """`validateTool` and tool lookups for the executors, inside the caller's tenant."""

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        runner: ToolRunner,
        remove_scratch: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._uow = uow
        self.runner = runner
        #: (tenant id, execution id) -> removes that run's scratch directory
        self._remove_scratch = remove_scratch

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
        check_config(
            check,
            tool.kind,
            draft.config if draft is not None else tool.config,
            allowed_images=self.runner.allowed_images,
        )
        check_input_schema(check, "inputSchema", tool.input_schema)
        errors = [f"{k}: {v}" for k, v in check.errors.items()]
        if errors:
            return ToolValidationResult(False, tuple(errors), None, None)
        data = {} if sample_input is None else sample_input
        errors += input_problems(tool, data)
        if errors:
            return ToolValidationResult(False, tuple(errors), None, None)
        from domain.sandbox import new_execution_id

        # A dry run is a throwaway execution: its scratch directory (file tools) goes
        # when it ends. It never queues for a sandbox slot: past the caps it is refused
        # with LIMIT_EXCEEDED (the editor retries), so dry runs cannot pile up.
        execution_id = f"validate-{new_execution_id()}"
        try:
            outcome = await self.runner.run(p.tenant_id, tool, data, execution_id, slot_wait=0)
        except NotConfigured as exc:
            return ToolValidationResult(False, (exc.message,), None, None)
        except BadUserInput as exc:
            return ToolValidationResult(
                False, (exc.message, *(f"{k}: {v}" for k, v in exc.fields.items())), None, None
            )
        finally:
            if self._remove_scratch is not None:
                await self._remove_scratch(p.tenant_id, execution_id)
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

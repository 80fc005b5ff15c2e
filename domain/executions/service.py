"""Execution use cases: run flows and crews, cancel, read runs, follow their events.

- `execute_flow` validates the flow (refused with BAD_USER_INPUT when invalid) and the
  inputs (a JSON object, at most `max_input_bytes`, matching every INPUT node's
  `config.schema`), pins the flow's current version, stores a PENDING execution and
  dispatches it; it returns at once. Over `max_active` PENDING + RUNNING executions in the
  tenant it is refused with LIMIT_EXCEEDED, and so it is over the tenant's daily
  execution quota (`domain.quotas`; scheduled runs count too); how many run at the same
  time is the worker's business (the tenant's concurrency quota, the rest wait as PENDING).
- `test_crew` does the same for a one-node flow: INPUT "input" -> CREW "crew" -> OUTPUT
  "output", the crew node's `inputs` mapping every execution input `k` to the template
  `{{ inputs.k }}` (so keys must be identifiers).
- `cancel`: a PENDING or WAITING execution is CANCELLED at once (with its
  EXECUTION_CANCELLED event); a RUNNING one gets the persisted cancel flag plus a Redis
  signal, and its worker stops it within a second; a finished one is returned as it is.
- `resolve_approval` answers an APPROVAL node (approvals.py): under the execution's row
  lock, the answer's `input` checked against the request's input schema, written by a
  conditional update (a second answer, or one racing it in another process, is
  CONFLICT). A WAITING execution becomes PENDING with EXECUTION_RESUMED and is
  dispatched; a RUNNING one (other branches still running) picks the answer up itself.
  `pending_approvals` lists the unanswered requests of a run that is not finished.
- `follow_events` / `updates` back the subscriptions (see `streams.py`).

Every use case takes the caller's `Principal`; an id of another tenant is NOT_FOUND.
"""

from __future__ import annotations

import builtins
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.audit import APPROVAL_ANSWERED, NO_AUDIT, AuditRecorder
from domain.auth import is_uuid
from domain.errors import BadUserInput, Conflict, LimitExceeded, NotFound
from domain.executions.approvals import Approval, ApprovalAnswer, check_answer
from domain.executions.builtins import validate_inputs
from domain.executions.claims import TENANT_SUSPENDED_ERROR
from domain.executions.events import EventType, ExecutionEvent
from domain.executions.ports import Dispatcher, ExecutionBus, ExecutionFilter, NodeResult
from domain.executions.records import Execution, ExecutionRef
from domain.executions.state import ExecutionStatus, is_terminal, transition
from domain.executions.streams import (
    DEFAULT_IDLE_POLL,
    FeedInterrupted,
    Subscription,
    follow,
)
from domain.flows.graph import ReferenceIndex, validate_flow
from domain.flows.model import FlowEdge, FlowGraph, FlowNode, NodeKind
from domain.flows.service import reference_index
from domain.identity import Principal
from domain.ports import Page, UnitOfWork, UnitOfWorkFactory
from domain.quotas import TenantQuotas
from domain.rbac import Action
from domain.resources import require_id
from domain.tenants import TenantQuota

log = logging.getLogger("crewgraph.executions")

DEFAULT_MAX_INPUT_BYTES = 256_000
DEFAULT_MAX_ACTIVE = 1000
MAX_EVENTS_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ExecutionLimits:
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_active: int = DEFAULT_MAX_ACTIVE  # PENDING + RUNNING per tenant
    max_nodes: int = 2000


# --------------------------------------------------------------------------- use cases


class ExecutionService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        bus: ExecutionBus,
        dispatcher: Dispatcher | None,
        limits: ExecutionLimits | None = None,
        *,
        idle_poll: float = DEFAULT_IDLE_POLL,
        audit: AuditRecorder = NO_AUDIT,
        quotas: TenantQuotas | None = None,
    ) -> None:
        self._uow = uow
        self._quotas = quotas  # the daily execution quota; None: not enforced
        self._bus = bus
        self.dispatcher = dispatcher
        self.limits = limits or ExecutionLimits()
        self.idle_poll = idle_poll
        self._audit = audit

    # ---- starting runs

    async def execute_flow(self, p: Principal, flow_id: str, inputs: object) -> Execution:
        p.require(Action.RUN)
        clean = self._check_inputs(inputs)
        quota = await self.quota_of(p.tenant_id)
        async with self._uow(p.tenant_schema) as uow:
            execution = await self.add_flow_execution(uow, p, flow_id, clean, quota=quota)
            await uow.commit()
        await self._started(p, execution)
        return execution

    def check_inputs(self, inputs: object) -> dict[str, Any]:
        """Inputs as every run takes them: a plain JSON object within the size limit."""
        return self._check_inputs(inputs)

    async def announce(self, p: Principal, execution: Execution) -> None:
        """After the commit of `add_flow_execution`: publish and dispatch the run."""
        await self._started(p, execution)

    async def add_flow_execution(
        self,
        uow: UnitOfWork,
        p: Principal,
        flow_id: str,
        inputs: object,
        *,
        created_by: str | None = None,
        quota: TenantQuota | None = None,
    ) -> Execution:
        """Check the flow and the inputs and store a PENDING run in the caller's
        transaction (a schedule advances in the same one); the caller commits, then
        `announce`s it. Refusals are raised before anything is written. `quota`: the
        tenant's, from `quota_of` before the caller's unit of work opened."""
        clean = self._check_inputs(inputs)
        flow = await uow.flows.get(require_id("flow", flow_id))
        if flow is None:
            raise NotFound("flow", flow_id)
        if len(flow.nodes) > self.limits.max_nodes:
            raise LimitExceeded(
                f"flow has {len(flow.nodes)} nodes; the limit (maxNodesPerFlow) is "
                f"{self.limits.max_nodes}",
                extensions={"limit": "maxNodesPerFlow", "max": self.limits.max_nodes},
            )
        refs = await reference_index(uow, flow.nodes)
        _require_valid(validate_flow(flow.graph, refs), f"flow {flow.name!r}")
        for node in flow.nodes:
            if node.kind == NodeKind.INPUT and node.config.get("schema"):
                validate_inputs(clean, node.config["schema"])
        await self._check_active(uow, p)
        await self._check_daily(uow, p, quota)
        execution = self._new(p, clean, flow_id=flow.id, flow_version=flow.version)
        if created_by is not None:
            execution.created_by = created_by
        await uow.executions.add(execution, self._ref(p, execution), None)
        return execution

    async def test_crew(self, p: Principal, crew_id: str, inputs: object) -> Execution:
        p.require(Action.RUN)
        clean = self._check_inputs(inputs)
        bad = sorted(k for k in clean if not k.isidentifier())
        if bad:
            raise BadUserInput(
                "crew inputs are passed by name, so their names must be identifiers",
                {f"inputs.{k}": "must be an identifier (letters, digits, _)" for k in bad},
            )
        quota = await self.quota_of(p.tenant_id)
        async with self._uow(p.tenant_schema) as uow:
            crew = await uow.crews.get(require_id("crew", crew_id))
            if crew is None:
                raise NotFound("crew", crew_id)
            graph = crew_graph(crew.id, clean)
            _require_valid(
                validate_flow(graph, ReferenceIndex(crew_ids=frozenset({crew.id}))), "crew run"
            )
            await self._check_active(uow, p)
            await self._check_daily(uow, p, quota)
            execution = self._new(p, clean, crew_id=crew.id)
            await uow.executions.add(execution, self._ref(p, execution), graph)
            await uow.commit()
        await self._started(p, execution)
        return execution

    def _check_inputs(self, inputs: object) -> dict[str, Any]:
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping):
            raise BadUserInput("inputs must be a JSON object", {"inputs": "must be a JSON object"})
        try:
            size = len(json.dumps(inputs, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError):
            raise BadUserInput("inputs must be plain JSON", {"inputs": "must be plain JSON"})
        limit = self.limits.max_input_bytes
        if size > limit:
            raise LimitExceeded(
                f"execution inputs are {size} bytes; the limit (maxExecutionInputBytes) is "
                f"{limit} bytes",
                extensions={"limit": "maxExecutionInputBytes", "max": limit, "size": size},
            )
        return {str(k): v for k, v in inputs.items()}

    async def _check_active(self, uow: UnitOfWork, p: Principal) -> None:
        active = await uow.executions.count_active(p.tenant_id)
        if active >= self.limits.max_active:
            raise LimitExceeded(
                f"the team already has {active} pending or running executions; the limit "
                f"(maxActiveExecutions) is {self.limits.max_active}",
                extensions={"limit": "maxActiveExecutions", "max": self.limits.max_active},
            )

    async def quota_of(self, tenant_id: str) -> TenantQuota | None:
        """The tenant's quota, read before a unit of work opens (see `add_flow_execution`)."""
        return await self._quotas.of(tenant_id) if self._quotas is not None else None

    async def _check_daily(self, uow: UnitOfWork, p: Principal, quota: TenantQuota | None) -> None:
        # Last of the checks: it takes the tenant's lock, held until the caller commits.
        if self._quotas is not None:
            await self._quotas.check_executions(
                p.tenant_id,
                lambda since: uow.executions.created_since(p.tenant_id, since),
                quota,
            )

    @staticmethod
    def _new(p: Principal, inputs: dict[str, Any], **kw: Any) -> Execution:
        return Execution(
            id=str(uuid.uuid4()),
            status=ExecutionStatus.PENDING,
            inputs=inputs,
            created_at=datetime.now(UTC),
            created_by=p.user_id or p.api_key_id,
            **kw,
        )

    @staticmethod
    def _ref(p: Principal, execution: Execution) -> ExecutionRef:
        return ExecutionRef(p.tenant_id, p.tenant_schema, execution.id)

    async def _started(self, p: Principal, execution: Execution) -> None:
        """Announce and dispatch. Failures only delay the run: the sweeper re-dispatches."""
        try:
            await self._bus.publish_status(p.tenant_id, execution)
        except Exception:
            log.exception("publishing a status change failed")
        if self.dispatcher is None:
            return
        try:
            await self.dispatcher.dispatch(self._ref(p, execution))
        except Exception:
            log.exception("dispatch failed; the sweeper will retry")

    # ---- cancel

    async def cancel(self, p: Principal, ident: str) -> Execution:
        p.require(Action.RUN)
        return await self._cancel(p.tenant_id, p.tenant_schema, ident, None)

    async def cancel_suspended_tenant_runs(self, tenant_id: str, tenant_schema: str) -> int:
        """Every PENDING, RUNNING and WAITING run of a just-suspended tenant ends CANCELLED
        with the error "tenant suspended", as `cancel` ends runs: PENDING and WAITING ones
        at once, RUNNING ones by their worker within a second (the run store records the
        same error for a run cancelled while its tenant is suspended, and a claim cancels
        any run of a suspended tenant, claims.py). How many runs were asked to end."""
        async with self._uow(tenant_schema) as uow:
            idents = await uow.executions.unfinished_ids()
        for ident in idents:
            try:
                await self._cancel(tenant_id, tenant_schema, ident, TENANT_SUSPENDED_ERROR)
            except NotFound:
                continue  # deleted meanwhile (its flow with it)
        return len(idents)

    async def _cancel(
        self, tenant_id: str, tenant_schema: str, ident: str, error: str | None
    ) -> Execution:
        """`error`: why, when not the user's own cancel."""
        event: ExecutionEvent | None = None
        signal = False
        async with self._uow(tenant_schema) as uow:
            execution = await uow.executions.get(require_id("execution", ident), for_update=True)
            if execution is None:
                raise NotFound("execution", ident)
            if execution.status == ExecutionStatus.PENDING:
                transition(execution.status, ExecutionStatus.CANCELLED)
                execution = await uow.executions.end_pending(
                    ident, ExecutionStatus.CANCELLED, error or "cancelled before it started"
                )
                event = await uow.executions.append_event(
                    ident, EventType.EXECUTION_CANCELLED, None, {"cancelledNodes": []}
                )
                await uow.commit()
            elif execution.status == ExecutionStatus.WAITING:
                asked = await uow.executions.approvals(ident)
                cancelled = [a.node_id for a in asked if not a.answered]
                transition(execution.status, ExecutionStatus.CANCELLED)
                execution = await uow.executions.end_waiting(
                    ident,
                    ExecutionStatus.CANCELLED,
                    error or "cancelled while waiting for approval",
                )
                event = await uow.executions.append_event(
                    ident, EventType.EXECUTION_CANCELLED, None, {"cancelledNodes": cancelled}
                )
                execution.last_sequence = event.sequence
                await uow.commit()
            elif execution.status == ExecutionStatus.RUNNING:
                if not execution.cancel_requested:
                    await uow.executions.request_cancel(ident)
                    await uow.commit()
                    execution.cancel_requested = True
                signal = True
        try:
            if event is not None:
                await self._bus.publish_status(tenant_id, execution)
                await self._bus.publish_event(tenant_id, event)
            if signal:
                await self._bus.publish_cancel(ExecutionRef(tenant_id, tenant_schema, execution.id))
        except Exception:
            # The flag is persisted: the worker's heartbeat reads it.
            log.exception("publishing a cancel failed")
        return execution

    # ---- approvals

    async def resolve_approval(
        self,
        p: Principal,
        ident: str,
        node_id: str,
        approved: bool,
        input: Any = None,
        comment: str | None = None,
    ) -> Execution:
        p.require(Action.RUN)
        if not isinstance(node_id, str) or not node_id or len(node_id) > 128:
            raise BadUserInput("nodeId must be a node id", {"nodeId": "must be a node id"})
        by = p.actor_name or p.user_id or p.api_key_id
        resumed = None
        async with self._uow(p.tenant_schema) as uow:
            execution = await uow.executions.get(require_id("execution", ident), for_update=True)
            if execution is None:
                raise NotFound("execution", ident)
            approval = _find(await uow.executions.approvals(ident), node_id)
            if approval is None:
                raise NotFound("approval of node", node_id)
            if approval.answered:
                raise Conflict(
                    f"the approval of node {node_id!r} was already answered",
                    extensions={"nodeId": node_id},
                )
            if is_terminal(execution.status):
                raise Conflict(
                    f"the execution is {execution.status.value}; its approvals can no "
                    "longer be answered",
                    extensions={"status": execution.status.value},
                )
            check_answer(approval, input, comment, self.limits.max_input_bytes)
            answer = ApprovalAnswer(bool(approved), input, comment, by)
            if await uow.executions.answer_approval(ident, node_id, answer) is None:
                raise Conflict(f"the approval of node {node_id!r} was already answered")
            if execution.status == ExecutionStatus.WAITING:
                data = {"nodeIds": [node_id], "reason": "answered", "approved": bool(approved)}
                resumed = await uow.executions.resume(ident, data)
                execution = resumed.execution
            await uow.commit()
        self._audit.record(
            p.tenant_id,
            APPROVAL_ANSWERED,
            principal=p,
            target=f"{ident}/{node_id}",
            data={"approved": bool(approved)},
        )
        if resumed is not None:
            try:
                await self._bus.publish_status(p.tenant_id, execution)
                await self._bus.publish_event(p.tenant_id, resumed.event)
            except Exception:
                log.exception("publishing a resume failed")
            if self.dispatcher is not None:
                try:
                    await self.dispatcher.dispatch(self._ref(p, execution))
                except Exception:
                    log.exception("dispatch failed; the sweeper will retry")
        return execution

    async def pending_approvals(
        self, p: Principal, execution: Execution
    ) -> builtins.list[Approval]:
        """The unanswered approvals of a run that can still be answered."""
        return (await self.pending_approvals_of(p, [execution])).get(execution.id, [])

    async def pending_approvals_of(
        self, p: Principal, executions: Sequence[Execution]
    ) -> dict[str, builtins.list[Approval]]:
        """`pending_approvals` of several runs, read at once (the
        `Execution.pendingApprovals` DataLoader); runs with none are absent."""
        p.require(Action.READ)
        answerable = [e.id for e in executions if _answerable(e)]
        if not answerable:
            return {}
        async with self._uow(p.tenant_schema) as uow:
            found = await uow.executions.approvals_of(answerable)
        return {i: [a for a in found[i] if not a.answered] for i in found}

    # ---- reads

    async def get(self, p: Principal, ident: str) -> Execution:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            found = await uow.executions.get(require_id("execution", ident))
        if found is None:
            raise NotFound("execution", ident)
        return found

    async def list(
        self,
        p: Principal,
        first: int,
        after: str | None,
        *,
        status: ExecutionStatus | None = None,
        flow_id: str | None = None,
    ) -> Page[Execution]:
        p.require(Action.READ)
        if flow_id is not None and not is_uuid(flow_id):
            return Page(items=[], has_next_page=False)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.executions.page(first, after, ExecutionFilter(status, flow_id))

    async def node_runs(
        self, p: Principal, ids: Sequence[str]
    ) -> dict[str, builtins.list[NodeResult]]:
        """Node runs of the given executions of the caller's tenant (others: none)."""
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.executions.node_runs(ids)

    async def events(
        self, p: Principal, ident: str, after: int = 0, limit: int = MAX_EVENTS_PAGE
    ) -> builtins.list[ExecutionEvent]:
        await self.get(p, ident)
        limit = max(1, min(limit, MAX_EVENTS_PAGE))
        async with self._uow(p.tenant_schema) as uow:
            return await uow.executions.events_after(ident, max(after, 0), limit)

    # ---- live

    async def follow_events(
        self,
        p: Principal,
        ident: str,
        after: int | None,
        *,
        live: bool = True,
        on_subscribed: Callable[[int], Awaitable[None]] | None = None,
        before_replay: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[ExecutionEvent]:
        """Stored events after `after`, then live ones, each once, up to the terminal one.

        `after=None` follows from the head (live only). `before_replay` runs after the
        checks, before anything is read (the multiplexer joins its group there).
        """
        if after is not None and after < 0:
            raise BadUserInput(
                "afterSequence must be 0 or more", {"afterSequence": "must be 0 or more"}
            )
        await self.get(p, ident)  # READ, and NOT_FOUND for other tenants' ids
        if before_replay is not None:
            await before_replay()
        tenant_log = _TenantLog(self._uow, p.tenant_schema)

        def feed() -> AbstractAsyncContextManager[Subscription[ExecutionEvent]]:
            return self._bus.events(p.tenant_id, ident)

        async for event in follow(
            tenant_log,
            feed,
            ident,
            after,
            live=live,
            idle_poll=self.idle_poll,
            on_subscribed=on_subscribed,
        ):
            yield event

    async def updates(
        self,
        p: Principal,
        *,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
        before_subscribe: Callable[[], Awaitable[None]] | None = None,
        live: bool = True,
    ) -> AsyncIterator[Execution]:
        """Every status change of the caller's tenant from now on.

        Best effort: changes published while the subscription was being re-established
        (slow consumer, Redis reconnect) are not replayed.
        """
        p.require(Action.READ)
        if before_subscribe is not None:
            await before_subscribe()
        if not live:
            return
        first = True
        while True:
            try:
                async with self._bus.statuses(p.tenant_id) as subscription:
                    if first and on_subscribed is not None:
                        await on_subscribed()
                    first = False
                    while True:
                        execution = await subscription.next(None)
                        if execution is not None:
                            yield execution
            except FeedInterrupted:
                continue


class _TenantLog:
    """The event log of one tenant, one short transaction per read."""

    def __init__(self, uow: UnitOfWorkFactory, schema: str) -> None:
        self._uow = uow
        self._schema = schema

    async def events_after(
        self, execution_id: str, after: int, limit: int, before: int | None = None
    ) -> list[ExecutionEvent]:
        async with self._uow(self._schema) as uow:
            return await uow.executions.events_after(execution_id, after, limit, before)

    async def head(self, execution_id: str) -> tuple[int, bool]:
        async with self._uow(self._schema) as uow:
            return await uow.executions.head(execution_id)


def crew_graph(crew_id: str, inputs: Mapping[str, Any]) -> FlowGraph:
    """The one-node flow `testCrew` runs: INPUT -> CREW -> OUTPUT."""
    crew_inputs = {k: "{{ inputs.%s }}" % k for k in inputs}  # noqa: UP031
    return FlowGraph(
        nodes=(
            FlowNode("input", NodeKind.INPUT.value, "input"),
            FlowNode(
                "crew", NodeKind.CREW.value, "crew", {"crewId": crew_id, "inputs": crew_inputs}
            ),
            FlowNode("output", NodeKind.OUTPUT.value, "output"),
        ),
        edges=(FlowEdge("input", "crew"), FlowEdge("crew", "output")),
    )


def _answerable(execution: Execution) -> bool:
    """Whether the run's approvals can still be answered: started and not finished."""
    never_started = execution.status == ExecutionStatus.PENDING and not execution.started_at
    return not (is_terminal(execution.status) or never_started)


def _find(approvals: Sequence[Approval], node_id: str) -> Approval | None:
    return next((a for a in approvals if a.node_id == node_id), None)


def _require_valid(result: Any, what: str) -> None:
    if result.valid:
        return
    fields = {f"flow.{k}": v for k, v in result.field_errors.items()}
    raise BadUserInput(f"{what} is not valid: {result.errors[0]}", fields or None)

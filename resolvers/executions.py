"""Execution queries, mutations and subscriptions (thin: parse, call one use case, map)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import strawberry
from strawberry.scalars import JSON

from domain.executions.events import ExecutionEvent as DomainEvent
from domain.executions.records import Execution as DomainExecution
from domain.executions.state import ExecutionStatus as DomainStatus
from domain.validation import page_size
from resolvers.multiplex import Follow, multiplexed
from schema.context import Info
from schema.executions import Execution, ExecutionEvent, ExecutionStatus
from schema.relay import Connection, connection


async def executions(
    info: Info,
    first: int | None = None,
    after: str | None = None,
    status: ExecutionStatus | None = None,  # type: ignore[valid-type]
    flow_id: strawberry.ID | None = None,
) -> Connection[Execution]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    page = await info.context.services.executions.list(
        p,
        size,
        after,
        status=DomainStatus(status) if status is not None else None,
        flow_id=str(flow_id) if flow_id is not None else None,
    )
    return connection(page, Execution.from_domain)


async def execution(info: Info, id: strawberry.ID) -> Execution:
    p = await info.context.principal()
    return Execution.from_domain(await info.context.services.executions.get(p, id))


async def execute_flow(info: Info, id: strawberry.ID, inputs: JSON) -> Execution:
    p = await info.context.principal()
    return Execution.from_domain(await info.context.services.executions.execute_flow(p, id, inputs))


async def test_crew(info: Info, id: strawberry.ID, inputs: JSON) -> Execution:
    p = await info.context.principal()
    return Execution.from_domain(await info.context.services.executions.test_crew(p, id, inputs))


async def cancel_execution(info: Info, id: strawberry.ID) -> Execution:
    p = await info.context.principal()
    return Execution.from_domain(await info.context.services.executions.cancel(p, id))


async def resolve_approval(
    info: Info,
    execution_id: strawberry.ID,
    node_id: str,
    approved: bool,
    input: JSON | None = None,
    comment: str | None = None,
) -> Execution:
    p = await info.context.principal()
    found = await info.context.services.executions.resolve_approval(
        p, execution_id, node_id, approved, input, comment
    )
    return Execution.from_domain(found)


async def execution_events(
    info: Info, execution_id: strawberry.ID, after_sequence: int | None = 0
) -> AsyncGenerator[ExecutionEvent, None]:
    """Stored events after `afterSequence`, then live ones; ends after the terminal one."""
    p = await info.context.principal()
    service = info.context.services.executions

    def follow(f: Follow) -> AsyncIterator[DomainEvent]:
        return service.follow_events(
            p,
            execution_id,
            f.after,
            live=f.live,
            on_subscribed=f.on_subscribed,
            before_replay=f.before_replay,
        )

    async for event in multiplexed(
        follow,
        after=after_sequence or 0,  # an explicit null means "from the start" too
        sequence=lambda e: e.sequence,
        is_terminal=lambda e: e.is_terminal,
    ):
        yield ExecutionEvent.from_domain(event)


async def execution_updates(info: Info) -> AsyncGenerator[Execution, None]:
    """Every status change of the caller's tenant, from now on."""
    p = await info.context.principal()
    service = info.context.services.executions

    def follow(f: Follow) -> AsyncIterator[DomainExecution]:
        # Nothing to replay: status changes are not stored as a log.
        return service.updates(
            p, live=f.live, before_subscribe=f.before_replay, on_subscribed=f.when_subscribed()
        )

    async for update in multiplexed(follow):
        info.context.reset_loaders()  # nested fields are read fresh for every change
        yield Execution.from_domain(update)

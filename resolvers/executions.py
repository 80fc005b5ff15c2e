"""Execution queries, mutations and subscriptions (thin: parse, call one use case, map)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from domain.executions.state import ExecutionStatus as DomainStatus
from domain.validation import page_size
from resolvers.multiplex import MUX, Replay, Tail
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


async def flow_executions(
    info: Info, flow_id: str, first: int | None = None, after: str | None = None
) -> Connection[Execution]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    page = await info.context.services.executions.list(p, size, after, flow_id=flow_id)
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


async def execution_events(
    info: Info, execution_id: strawberry.ID, after_sequence: int | None = 0
) -> AsyncGenerator[ExecutionEvent, None]:
    """Stored events after `afterSequence`, then live ones; ends after the terminal one."""
    after_sequence = after_sequence or 0  # an explicit null means "from the start" too
    p = await info.context.principal()
    service = info.context.services.executions
    mode = MUX.get()
    if isinstance(mode, Replay):
        mode.sequence = after_sequence  # live frames continue after this (or the replay)
        async for event in service.follow_events(
            p, execution_id, after_sequence, live=False, before_replay=mode.join
        ):
            mode.sequence = event.sequence
            yield ExecutionEvent.from_domain(event)
            if event.is_terminal:
                return
        mode.live = True
        return
    if isinstance(mode, Tail):
        async for event in service.follow_events(p, execution_id, None, on_subscribed=mode.ready):
            mode.sequences.append(event.sequence)
            yield ExecutionEvent.from_domain(event)
        return
    async for event in service.follow_events(p, execution_id, after_sequence):
        yield ExecutionEvent.from_domain(event)


def _fresh(info: Info) -> None:
    reset = getattr(info.context, "reset_loaders", None)
    if reset is not None:
        reset()


async def execution_updates(info: Info) -> AsyncGenerator[Execution, None]:
    """Every status change of the caller's tenant, from now on."""
    p = await info.context.principal()
    service = info.context.services.executions
    mode = MUX.get()
    if isinstance(mode, Replay):
        async for _ in service.updates(p, before_subscribe=mode.join, live=False):
            pass  # nothing to replay: status changes are not stored as a log
        mode.live = True
        return
    if isinstance(mode, Tail):
        count = 0

        async def ready() -> None:
            await mode.ready(0)

        async for update in service.updates(p, on_subscribed=ready):
            count += 1
            mode.sequences.append(count)
            _fresh(info)
            yield Execution.from_domain(update)
        return
    async for update in service.updates(p):
        _fresh(info)
        yield Execution.from_domain(update)

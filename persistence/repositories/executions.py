"""Executions of one tenant inside a unit of work (the use cases' repository).

SQL runs on the unit of work's connection, in its transaction (`ConnectionStatements`).
`public.active_executions` mirrors every PENDING / RUNNING execution of every tenant, in
the same transaction as the tenant row: the sweeper and the per-tenant concurrency limit
read it instead of visiting every tenant schema.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from domain.auth import is_uuid
from domain.executions.approvals import Approval, ApprovalAnswer
from domain.executions.events import EventType, ExecutionEvent, NewEvent
from domain.executions.ports import ExecutionFilter, LeaseLost, NodeResult, Resumed
from domain.executions.records import Execution, ExecutionRef
from domain.executions.state import ExecutionStatus
from domain.flows.model import FlowGraph
from domain.ports import Page
from persistence.pagination import decode_cursor, encode_cursor
from persistence.repositories import approvals, execution_events, quotas
from persistence.repositories.execution_rows import (
    clean_text,
    graph_json,
    json_param,
    json_text,
    to_execution,
    to_node_result,
)
from persistence.repositories.sql import ConnectionStatements, Statements, in_schema

_ADD = """
WITH x AS (
    INSERT INTO {s}.executions
        (id, flow_id, flow_version, crew_id, graph, status, inputs, created_by, created_at)
    VALUES ($1::uuid, $2::uuid, $3, $4::uuid, $5::jsonb, $6, $7::jsonb, $8, $9)
    RETURNING id, status, created_at
)
INSERT INTO public.active_executions
    (execution_id, tenant_id, tenant_schema, status, dispatched_at, created_at)
SELECT x.id, $10::uuid, $11, x.status, now(), x.created_at FROM x
"""

_GET = "SELECT * FROM {s}.executions WHERE id = $1::uuid"
_GET_FOR_UPDATE = _GET + " FOR UPDATE"
_GET_MANY = "SELECT * FROM {s}.executions WHERE id = ANY($1::uuid[])"

_NODE_RUNS = """
SELECT * FROM {s}.node_runs WHERE execution_id = ANY($1::uuid[])
ORDER BY execution_id, started_at ASC NULLS LAST, finished_at ASC NULLS LAST, node_id
"""

_REQUEST_CANCEL = "UPDATE {s}.executions SET cancel_requested = true WHERE id = $1::uuid"

_UNFINISHED = """
SELECT id FROM {s}.executions WHERE status IN ('PENDING', 'RUNNING', 'WAITING')
ORDER BY created_at
"""

_COUNT_ACTIVE = """
SELECT count(*) FROM public.active_executions
WHERE tenant_id = $1::uuid AND status <> 'WAITING'
"""

# Ends an execution: its unfinished node runs become CANCELLED and it leaves the index.
_END = """
WITH x AS (
    UPDATE {s}.executions
    SET status = $2, error = $3, finished_at = now(), lease_owner = NULL,
        lease_expires_at = NULL
    WHERE id = $1::uuid {only}
    RETURNING *
), n AS (
    UPDATE {s}.node_runs SET status = 'CANCELLED', finished_at = now()
    WHERE execution_id IN (SELECT id FROM x) AND status IN ('PENDING', 'RUNNING', 'WAITING')
), a AS (
    DELETE FROM public.active_executions WHERE execution_id IN (SELECT id FROM x)
)
SELECT * FROM x
"""
_END_ANY = _END.replace("{only}", "")
_END_PENDING = _END.replace("{only}", "AND status = 'PENDING'")
_END_WAITING = _END.replace("{only}", "AND status = 'WAITING'")


async def end(
    sql: Statements,
    schema: str,
    ident: str,
    status: ExecutionStatus,
    error: str | None,
    *,
    only_pending: bool = False,
    only_waiting: bool = False,
) -> Execution | None:
    """The execution ends without (more) running; None when no row matched."""
    template = _END_PENDING if only_pending else _END_WAITING if only_waiting else _END_ANY
    row = await sql.fetchrow(in_schema(template, schema), ident, status.value, clean_text(error))
    return to_execution(row) if row is not None else None


class SqlExecutions:
    """Executions of the unit of work's tenant."""

    def __init__(self, conn: AsyncConnection, schema: str) -> None:
        self._sql = ConnectionStatements(conn)
        self._schema = schema

    def _q(self, template: str) -> str:
        return in_schema(template, self._schema)

    async def add(self, e: Execution, ref: ExecutionRef, graph: FlowGraph | None) -> None:
        await self._sql.execute(
            self._q(_ADD),
            e.id,
            e.flow_id,
            e.flow_version,
            e.crew_id,
            json_param(graph_json(graph)) if graph is not None else None,
            e.status.value,
            json_text(e.inputs or {}),
            e.created_by,
            e.created_at,
            ref.tenant_id,
            ref.tenant_schema,
        )

    async def get(self, ident: str, *, for_update: bool = False) -> Execution | None:
        if not is_uuid(ident):
            return None
        row = await self._sql.fetchrow(self._q(_GET_FOR_UPDATE if for_update else _GET), ident)
        return to_execution(row) if row else None

    async def get_many(self, ids: Sequence[str]) -> dict[str, Execution]:
        wanted = [i for i in dict.fromkeys(ids) if is_uuid(i)]
        if not wanted:
            return {}
        rows = await self._sql.fetch(self._q(_GET_MANY), wanted)
        return {str(r["id"]): to_execution(r) for r in rows}

    async def page(self, first: int, after: str | None, where: ExecutionFilter) -> Page[Execution]:
        """Newest first, keyset-paginated on (created_at, id) like every list."""
        conditions: list[str] = []
        args: list[Any] = []
        if where.status is not None:
            args.append(ExecutionStatus(where.status).value)
            conditions.append(f"status = ${len(args)}")
        if where.flow_id is not None:
            args.append(where.flow_id)
            conditions.append(f"flow_id = ${len(args)}::uuid")
        if after:
            created, ident = decode_cursor(after)
            args += [created, ident]
            conditions.append(f"(created_at, id::text) < (${len(args) - 1}, ${len(args)})")
        args.append(first + 1)
        template = (
            "SELECT * FROM {s}.executions"
            + (" WHERE " + " AND ".join(conditions) if conditions else "")
            + f" ORDER BY created_at DESC, id::text DESC LIMIT ${len(args)}"
        )
        rows = await self._sql.fetch(self._q(template), *args)
        items = [
            (to_execution(r), encode_cursor(r["created_at"], str(r["id"]))) for r in rows[:first]
        ]
        return Page(items=items, has_next_page=len(rows) > first)

    async def node_runs(self, ids: Sequence[str]) -> dict[str, list[NodeResult]]:
        wanted = [i for i in dict.fromkeys(ids) if is_uuid(i)]
        out: dict[str, list[NodeResult]] = defaultdict(list)
        if not wanted:
            return out
        for r in await self._sql.fetch(self._q(_NODE_RUNS), wanted):
            out[str(r["execution_id"])].append(to_node_result(r))
        return out

    async def events_after(
        self, execution_id: str, after: int, limit: int, before: int | None = None
    ) -> list[ExecutionEvent]:
        return await execution_events.events_after(
            self._sql, self._schema, execution_id, after, limit, before
        )

    async def head(self, execution_id: str) -> tuple[int, bool]:
        return await execution_events.head(self._sql, self._schema, execution_id)

    async def request_cancel(self, ident: str) -> None:
        await self._sql.execute(self._q(_REQUEST_CANCEL), ident)

    async def end_pending(
        self, ident: str, status: ExecutionStatus, error: str | None
    ) -> Execution:
        ended = await end(self._sql, self._schema, ident, status, error, only_pending=True)
        if ended is None:
            raise LeaseLost(f"execution {ident} is no longer PENDING")
        return ended

    async def append_event(
        self, ident: str, type: EventType, node_id: str | None, data: dict[str, Any] | None
    ) -> ExecutionEvent:
        event = NewEvent(type, node_id, datetime.now(UTC), data)
        stored = await execution_events.append(self._sql, self._schema, ident, [event])
        if stored is None:
            raise LeaseLost(f"execution {ident} not found")
        return stored[0]

    async def count_active(self, tenant_id: str) -> int:
        return int(await self._sql.fetchval(_COUNT_ACTIVE, tenant_id))

    async def unfinished_ids(self) -> list[str]:
        rows = await self._sql.fetch(self._q(_UNFINISHED))
        return [str(r["id"]) for r in rows]

    async def created_since(self, tenant_id: str, since: datetime) -> int:
        return await quotas.executions_created_since(self._sql, self._schema, tenant_id, since)

    # ---- approvals (persistence/repositories/approvals.py)

    async def approvals(self, execution_id: str) -> list[Approval]:
        if not is_uuid(execution_id):
            return []
        return await approvals.of_execution(self._sql, self._schema, execution_id)

    async def approvals_of(self, execution_ids: Sequence[str]) -> dict[str, list[Approval]]:
        wanted = [i for i in dict.fromkeys(execution_ids) if is_uuid(i)]
        if not wanted:
            return {}
        return await approvals.of_executions(self._sql, self._schema, wanted)

    async def answer_approval(
        self, execution_id: str, node_id: str, answer: ApprovalAnswer
    ) -> Approval | None:
        return await approvals.answer(self._sql, self._schema, execution_id, node_id, answer)

    async def resume(self, ident: str, data: dict[str, Any]) -> Resumed:
        resumed = await approvals.resume(self._sql, self._schema, ident, data)
        if resumed is None:
            raise LeaseLost(f"execution {ident} is no longer WAITING")
        return resumed

    async def end_waiting(
        self, ident: str, status: ExecutionStatus, error: str | None
    ) -> Execution:
        ended = await end(self._sql, self._schema, ident, status, error, only_waiting=True)
        if ended is None:
            raise LeaseLost(f"execution {ident} is no longer WAITING")
        return ended

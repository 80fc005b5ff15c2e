"""Approvals of APPROVAL nodes (`domain.executions.approvals`), and WAITING executions.

One row per (execution, node) in the tenant's `approvals` table: the request, written
once by the worker holding the lease, then the answer, written by a conditional update
(`answered_at IS NULL`) so exactly one of a member's answer and the system's timeout
wins, whatever the number of processes. These functions run on the caller's statements
(a unit of work's transaction, a claim-like transaction, or the autocommit pool); the
ones that change an execution's status expect its row lock to be held by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from domain.executions.approvals import (
    SYSTEM,
    Approval,
    ApprovalAnswer,
    ApprovalRequest,
    timeout_comment,
)
from domain.executions.events import EventType, NewEvent
from domain.executions.ports import Resumed
from persistence.repositories import execution_events
from persistence.repositories.execution_rows import clean_text, json_param, to_execution
from persistence.repositories.sql import Row, Statements, in_schema

# Insert the request unless the node has one; either way, the stored row (fenced: only
# while `owner` holds the execution's lease).
_REQUEST = """
WITH x AS (
    SELECT id FROM {s}.executions WHERE id = $1::uuid AND lease_owner = $2
), ins AS (
    INSERT INTO {s}.approvals
        (execution_id, node_id, prompt, input_schema, on_timeout, requested_at, expires_at)
    SELECT x.id, $3, $4, $5::jsonb, $6, $7, $8 FROM x
    ON CONFLICT (execution_id, node_id) DO NOTHING
    RETURNING *
)
SELECT * FROM ins
UNION ALL
SELECT a.* FROM {s}.approvals a JOIN x ON a.execution_id = x.id WHERE a.node_id = $3
"""

_ANSWERED = """
SELECT * FROM {s}.approvals
WHERE execution_id = $1::uuid AND node_id = ANY($2::text[]) AND answered_at IS NOT NULL
ORDER BY answered_at, node_id
"""

_LIST = "SELECT * FROM {s}.approvals WHERE execution_id = $1::uuid ORDER BY requested_at, node_id"
_LIST_MANY = """
SELECT * FROM {s}.approvals WHERE execution_id = ANY($1::uuid[])
ORDER BY execution_id, requested_at, node_id
"""

_ANSWER = """
UPDATE {s}.approvals
SET approved = $3, input = $4::jsonb, comment = $5, answered_by = $6, answered_at = now()
WHERE execution_id = $1::uuid AND node_id = $2 AND answered_at IS NULL
RETURNING *
"""

# The system's answer to expired requests (of one node, or all of an execution's).
_EXPIRE = """
UPDATE {s}.approvals
SET approved = false, comment = $3, answered_by = $4, answered_at = now(), timed_out = true
WHERE execution_id = $1::uuid AND ($2::text IS NULL OR node_id = $2)
  AND answered_at IS NULL AND expires_at <= now()
RETURNING node_id
"""

# WAITING -> PENDING; the waiting time is added up (it does not count toward the flow
# timeout) and the next claim is marked as the resume (no new attempt).
_RESUME = """
WITH x AS (
    UPDATE {s}.executions
    SET status = 'PENDING', resume_pending = true, waiting_since = NULL,
        waited_seconds = waited_seconds
            + coalesce(extract(epoch FROM now() - waiting_since)::float8, 0)
    WHERE id = $1::uuid AND status = 'WAITING'
    RETURNING *
), a AS (
    UPDATE public.active_executions
    SET status = 'PENDING', lease_expires_at = NULL, dispatched_at = now()
    WHERE execution_id IN (SELECT id FROM x)
)
SELECT * FROM x
"""

# The earliest deadline of a WAITING execution's unanswered approvals, where the
# sweeper's timeout scan looks (see tables.active_executions).
_NEXT_DEADLINE = """
UPDATE public.active_executions SET lease_expires_at = (
    SELECT min(expires_at) FROM {s}.approvals
    WHERE execution_id = $1::uuid AND answered_at IS NULL
)
WHERE execution_id = $1::uuid AND status = 'WAITING'
"""

_LOCK_STATUS = """
SELECT status, lease_owner, cancel_requested FROM {s}.executions WHERE id = $1::uuid FOR UPDATE
"""


def to_approval(r: Row) -> Approval:
    return Approval(
        execution_id=str(r["execution_id"]),
        node_id=r["node_id"],
        prompt=r["prompt"],
        input_schema=r["input_schema"],
        requested_at=r["requested_at"],
        expires_at=r["expires_at"],
        on_timeout=r["on_timeout"],
        approved=r["approved"],
        input=r["input"],
        comment=r["comment"],
        answered_by=r["answered_by"],
        answered_at=r["answered_at"],
        timed_out=bool(r["timed_out"]),
    )


async def request(
    sql: Statements, schema: str, execution_id: str, owner: str, req: ApprovalRequest
) -> Approval | None:
    """The stored request (inserted now or earlier); None when `owner` lost the lease."""
    row = await sql.fetchrow(
        in_schema(_REQUEST, schema),
        execution_id,
        owner,
        req.node_id,
        clean_text(req.prompt) or "",
        json_param(req.input_schema),
        req.on_timeout,
        req.requested_at,
        req.expires_at,
    )
    return to_approval(row) if row is not None else None


async def answered(
    sql: Statements, schema: str, execution_id: str, node_ids: Sequence[str]
) -> list[Approval]:
    if not node_ids:
        return []
    rows = await sql.fetch(in_schema(_ANSWERED, schema), execution_id, list(node_ids))
    return [to_approval(r) for r in rows]


async def of_execution(sql: Statements, schema: str, execution_id: str) -> list[Approval]:
    rows = await sql.fetch(in_schema(_LIST, schema), execution_id)
    return [to_approval(r) for r in rows]


async def of_executions(
    sql: Statements, schema: str, execution_ids: Sequence[str]
) -> dict[str, list[Approval]]:
    """Every approval of each execution (oldest first), in one statement."""
    out: dict[str, list[Approval]] = {}
    for r in await sql.fetch(in_schema(_LIST_MANY, schema), list(execution_ids)):
        out.setdefault(str(r["execution_id"]), []).append(to_approval(r))
    return out


async def answer(
    sql: Statements, schema: str, execution_id: str, node_id: str, a: ApprovalAnswer
) -> Approval | None:
    """Write the answer unless one was written first (then None)."""
    row = await sql.fetchrow(
        in_schema(_ANSWER, schema),
        execution_id,
        node_id,
        a.approved,
        json_param(a.input),
        clean_text(a.comment),
        a.by,
    )
    return to_approval(row) if row is not None else None


async def expire(
    sql: Statements, schema: str, execution_id: str, node_id: str | None = None
) -> list[str]:
    """Answer the expired, unanswered requests as the system; the node ids answered."""
    rows = await sql.fetch(
        in_schema(_EXPIRE, schema),
        execution_id,
        node_id,
        timeout_comment(),
        SYSTEM,
    )
    return [r["node_id"] for r in rows]


async def resume(
    sql: Statements, schema: str, execution_id: str, data: dict[str, Any]
) -> Resumed | None:
    """WAITING -> PENDING with EXECUTION_RESUMED (the caller holds the row lock); None
    when the execution is not WAITING."""
    row = await sql.fetchrow(in_schema(_RESUME, schema), execution_id)
    if row is None:
        return None
    event = NewEvent(EventType.EXECUTION_RESUMED, None, datetime.now(UTC), data)
    stored = await execution_events.append(sql, schema, execution_id, [event])
    assert stored is not None  # the row is locked
    record = to_execution(row)
    record.last_sequence = stored[-1].sequence
    return Resumed(record, stored[-1])


async def lock_status(sql: Statements, schema: str, execution_id: str) -> Row | None:
    """(status, lease_owner) of the execution, under its row lock."""
    return await sql.fetchrow(in_schema(_LOCK_STATUS, schema), execution_id)


async def next_deadline(sql: Statements, schema: str, execution_id: str) -> None:
    await sql.execute(in_schema(_NEXT_DEADLINE, schema), execution_id)

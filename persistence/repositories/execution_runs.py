"""The writes of one run (`domain.executions.ports.RunStore`), fenced by the lease owner.

Each call is one autocommit statement on the raw pool (`PoolStatements`): the per-event
hot path. A statement matches nothing once the worker lost its lease (another worker took
over), which is reported as `LeaseLost`. Nothing is published here: the domain's
`RunJournal` publishes what was stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from domain.executions.approvals import Approval, ApprovalRequest
from domain.executions.claims import TENANT_SUSPENDED_ERROR
from domain.executions.events import EventType, ExecutionEvent, NewEvent
from domain.executions.ports import LeaseLost, NodeResult, RunOutcome, Suspension
from domain.executions.records import Execution, ExecutionRef
from domain.executions.state import ExecutionStatus, NodeStatus
from persistence.db import Database
from persistence.repositories import approvals, execution_events
from persistence.repositories.execution_rows import (
    clean_text,
    json_param,
    to_execution,
    to_node_result,
)
from persistence.repositories.sql import ConnectionStatements, PoolStatements, in_schema

_LOAD_NODES = """
SELECT node_id, status, output, error, attempts, started_at, finished_at
FROM {s}.node_runs
WHERE execution_id = $1::uuid AND status IN ('COMPLETED', 'SKIPPED', 'WAITING')
"""

_SAVE_NODE = """
INSERT INTO {s}.node_runs
    (execution_id, node_id, status, output, error, attempts, started_at, finished_at)
SELECT x.id, $3, $4, $5::jsonb, $6, $7, $8, $9
FROM {s}.executions x WHERE x.id = $1::uuid AND x.lease_owner = $2
ON CONFLICT (execution_id, node_id) DO UPDATE SET
    status = EXCLUDED.status, output = EXCLUDED.output, error = EXCLUDED.error,
    attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at
RETURNING 1
"""

# A run cancelled while its tenant is suspended was cancelled by the suspension
# (domain.executions.service.cancel_suspended_tenant_runs): it says so ($6).
_FINISH = """
WITH x AS (
    UPDATE {s}.executions
    SET status = $3, outputs = $4::jsonb, finished_at = now(), lease_expires_at = NULL,
        error = CASE WHEN $3 = 'CANCELLED' AND $5::text IS NULL AND EXISTS (
                    SELECT 1 FROM public.active_executions a
                    JOIN public.tenants t ON t.id = a.tenant_id
                    WHERE a.execution_id = $1::uuid AND t.status = 'SUSPENDED')
                THEN $6 ELSE $5 END
    WHERE id = $1::uuid AND lease_owner = $2 AND status = 'RUNNING'
    RETURNING *
), a AS (
    DELETE FROM public.active_executions WHERE execution_id IN (SELECT id FROM x)
)
SELECT * FROM x
"""


# The run stops at its approvals: no lease, no slot (the index row says WAITING, with the
# earliest approval deadline for the sweeper).
_SUSPEND = """
WITH x AS (
    UPDATE {s}.executions
    SET status = 'WAITING', lease_owner = NULL, lease_expires_at = NULL, waiting_since = now()
    WHERE id = $1::uuid
    RETURNING *
), a AS (
    UPDATE public.active_executions
    SET status = 'WAITING', dispatched_at = NULL, lease_expires_at = (
        SELECT min(expires_at) FROM {s}.approvals
        WHERE execution_id = $1::uuid AND answered_at IS NULL
    )
    WHERE execution_id IN (SELECT id FROM x)
)
SELECT * FROM x
"""


class SqlRunStore:
    """One run of one tenant, written as `owner` (the worker holding the lease)."""

    def __init__(self, db: Database, ref: ExecutionRef, owner: str) -> None:
        self._db = db
        self._sql = PoolStatements(db)
        self.ref = ref
        self.owner = owner

    def _q(self, template: str) -> str:
        return in_schema(template, self.ref.tenant_schema)

    async def load_node_results(self, execution_id: str) -> dict[str, NodeResult]:
        rows = await self._sql.fetch(self._q(_LOAD_NODES), execution_id)
        return {r["node_id"]: to_node_result(r) for r in rows}

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None:
        saved = await self._sql.fetchval(
            self._q(_SAVE_NODE),
            execution_id,
            self.owner,
            result.node_id,
            NodeStatus(result.status).value,
            json_param(result.output),
            clean_text(result.error),
            result.attempts,
            result.started_at,
            result.finished_at,
        )
        if saved is None:
            raise LeaseLost(f"execution {execution_id}: lease lost")

    async def append_events(
        self, execution_id: str, events: Sequence[NewEvent], node: NodeResult | None = None
    ) -> list[ExecutionEvent]:
        stored = await execution_events.append(
            self._sql, self.ref.tenant_schema, execution_id, events, self.owner, node
        )
        if stored is None:
            raise LeaseLost(f"execution {execution_id}: lease lost")
        return stored

    async def finish(self, execution_id: str, outcome: RunOutcome) -> Execution:
        row = await self._sql.fetchrow(
            self._q(_FINISH),
            execution_id,
            self.owner,
            outcome.status.value,
            json_param(outcome.outputs),
            clean_text(outcome.error),
            TENANT_SUSPENDED_ERROR,
        )
        if row is None:
            raise LeaseLost(f"execution {execution_id}: lease lost")
        return to_execution(row)

    # ---- approvals

    async def request_approval(self, execution_id: str, request: ApprovalRequest) -> Approval:
        stored = await approvals.request(
            self._sql, self.ref.tenant_schema, execution_id, self.owner, request
        )
        if stored is None:
            raise LeaseLost(f"execution {execution_id}: lease lost")
        return stored

    async def approval_answers(self, execution_id: str, node_ids: Sequence[str]) -> list[Approval]:
        return await approvals.answered(self._sql, self.ref.tenant_schema, execution_id, node_ids)

    async def expire_approval(self, execution_id: str, node_id: str) -> None:
        await approvals.expire(self._sql, self.ref.tenant_schema, execution_id, node_id)

    async def suspend(self, execution_id: str, node_ids: Sequence[str]) -> Suspension:
        """Under the execution's row lock: the answers that arrived, or WAITING."""
        schema = self.ref.tenant_schema
        async with self._db.connect() as conn:
            sql = ConnectionStatements(conn)
            row = await approvals.lock_status(sql, schema, execution_id)
            if (
                row is None
                or row["lease_owner"] != self.owner
                or row["status"] != ExecutionStatus.RUNNING.value
            ):
                raise LeaseLost(f"execution {execution_id}: lease lost")
            if row["cancel_requested"]:
                return Suspension([], cancel_requested=True)
            answered = await approvals.answered(sql, schema, execution_id, node_ids)
            if answered:
                return Suspension(answered)
            event = NewEvent(
                EventType.EXECUTION_WAITING,
                None,
                datetime.now(UTC),
                {"waitingNodes": list(node_ids)},
            )
            # Status first: whoever reads the event with the execution (the webhook outbox)
            # sees it WAITING. The lease was checked under the lock held since.
            waiting = await sql.fetchrow(self._q(_SUSPEND), execution_id)
            stored = await execution_events.append(sql, schema, execution_id, [event])
            assert stored is not None and waiting is not None  # the row is locked
            await conn.commit()
        record = to_execution(waiting)
        record.last_sequence = stored[0].sequence
        return Suspension([], record, stored[0])

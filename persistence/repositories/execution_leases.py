"""Leases on executions (`domain.executions.ports.LeaseStore`): claims, renewals, sweeps.

A claim is one transaction on a SQLAlchemy pool connection: the tenant's advisory lock
(claims of one tenant queue up, so the RUNNING count they read is exact), the
execution's row lock, then the decision of `domain.executions.claims.ClaimPolicy`,
applied as it says. Everything else is one autocommit statement on the raw pool.
Nothing is published here: the runner and the sweeper announce what changed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.executions.claims import ClaimAction, ClaimPolicy, ClaimState
from domain.executions.events import NewEvent
from domain.executions.ports import Resumed
from domain.executions.records import (
    Claim,
    ClaimOutcome,
    Execution,
    ExecutionRef,
    LeaseState,
)
from domain.executions.state import ExecutionStatus
from persistence.db import Database
from persistence.repositories import approvals, execution_events
from persistence.repositories.execution_rows import graph_from, to_execution
from persistence.repositories.executions import end
from persistence.repositories.sql import (
    ConnectionStatements,
    PoolStatements,
    Row,
    Statements,
    in_schema,
)

_CLAIM_LOCK_NS = 0x6367  # pg_advisory_xact_lock(namespace, hashtext(tenant id))

_LOCK_TENANT = "SELECT pg_advisory_xact_lock($1, hashtext($2))"

_STATE = """
SELECT x.status, x.cancel_requested, x.attempts, x.resume_pending,
       coalesce(x.lease_expires_at > now(), false) AS lease_live,
       (SELECT count(*) FROM public.active_executions a
        WHERE a.tenant_id = $2::uuid AND a.status = 'RUNNING' AND a.execution_id <> x.id)
       AS running,
       (SELECT (t.quota ->> 'max_concurrent_executions')::bigint FROM public.tenants t
        WHERE t.id = $2::uuid) AS max_running,
       coalesce((SELECT t.status = 'SUSPENDED' FROM public.tenants t WHERE t.id = $2::uuid),
                false) AS tenant_suspended
FROM {s}.executions x WHERE x.id = $1::uuid
FOR UPDATE OF x
"""

_FORGET = "DELETE FROM public.active_executions WHERE execution_id = $1::uuid"

_START = """
WITH n AS (
    UPDATE {s}.node_runs SET status = 'PENDING'
    WHERE $4::bool AND execution_id = $1::uuid AND status = 'RUNNING'
), x AS (
    UPDATE {s}.executions
    SET status = 'RUNNING', lease_owner = $2, lease_expires_at = now() + $3::interval,
        attempts = attempts + CASE WHEN $5::bool THEN 0 ELSE 1 END,
        resume_pending = false, started_at = coalesce(started_at, now())
    WHERE id = $1::uuid
    RETURNING *, extract(epoch FROM now() - started_at)::float8 - waited_seconds AS elapsed
), a AS (
    UPDATE public.active_executions
    SET status = 'RUNNING', lease_expires_at = (SELECT lease_expires_at FROM x)
    WHERE execution_id = $1::uuid
)
SELECT x.*, v.nodes AS version_nodes, v.edges AS version_edges
FROM x LEFT JOIN {s}.flow_versions v ON v.flow_id = x.flow_id AND v.version = x.flow_version
"""

# RUNNING -> PENDING: the previous worker's RUNNING nodes run again on the next claim.
_REQUEUE = """
WITH x AS (
    UPDATE {s}.executions
    SET status = 'PENDING', lease_owner = NULL, lease_expires_at = NULL
    WHERE id = $1::uuid AND status = 'RUNNING' {only}
    RETURNING *
), n AS (
    UPDATE {s}.node_runs SET status = 'PENDING'
    WHERE execution_id IN (SELECT id FROM x) AND status = 'RUNNING'
), a AS (
    UPDATE public.active_executions
    SET status = 'PENDING', lease_expires_at = NULL,
        dispatched_at = CASE WHEN $2::bool THEN now() END
    WHERE execution_id IN (SELECT id FROM x)
)
SELECT * FROM x
"""
_REQUEUE_ANY = _REQUEUE.replace("{only}", "AND $3::text IS NULL")
_REQUEUE_OWNED = _REQUEUE.replace("{only}", "AND lease_owner = $3")
_REQUEUE_EXPIRED = _REQUEUE.replace("{only}", "AND lease_expires_at < now() AND $3::text IS NULL")

# After a requeue of an expired lease matched nothing (renewed meanwhile, or gone):
# bring the index back in line with the execution.
_RESYNC_INDEX = """
WITH cur AS (
    SELECT status, lease_expires_at FROM {s}.executions WHERE id = $1::uuid
), d AS (
    DELETE FROM public.active_executions
    WHERE execution_id = $1::uuid
      AND NOT EXISTS (SELECT 1 FROM cur WHERE status IN ('PENDING', 'RUNNING', 'WAITING'))
), u AS (
    UPDATE public.active_executions a SET lease_expires_at = cur.lease_expires_at
    FROM cur WHERE a.execution_id = $1::uuid AND cur.status = 'RUNNING'
)
SELECT 1
"""

_RENEW = """
WITH x AS (
    UPDATE {s}.executions
    SET lease_expires_at = CASE WHEN status = 'RUNNING' THEN now() + $3::interval
                                ELSE lease_expires_at END
    WHERE id = $1::uuid AND lease_owner = $2
    RETURNING cancel_requested, status, lease_expires_at
), a AS (
    UPDATE public.active_executions a SET lease_expires_at = x.lease_expires_at
    FROM x WHERE a.execution_id = $1::uuid AND x.status = 'RUNNING'
)
SELECT cancel_requested FROM x
"""

_EXPIRED = """
SELECT execution_id, tenant_id, tenant_schema FROM public.active_executions
WHERE status = 'RUNNING' AND lease_expires_at < now()
ORDER BY lease_expires_at LIMIT $1
"""

_STALE_PENDING = """
UPDATE public.active_executions SET dispatched_at = now()
WHERE execution_id IN (
    SELECT execution_id FROM public.active_executions
    WHERE status = 'PENDING'
      AND (dispatched_at IS NULL OR dispatched_at < now() - $1::interval)
    ORDER BY created_at LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING execution_id, tenant_id, tenant_schema, created_at
"""

# WAITING executions with an approval past its deadline (see tables.active_executions).
_EXPIRED_APPROVALS = """
SELECT execution_id, tenant_id, tenant_schema FROM public.active_executions
WHERE status = 'WAITING' AND lease_expires_at < now()
ORDER BY lease_expires_at LIMIT $1
"""

_NEXT_PENDING = """
SELECT execution_id, tenant_schema FROM public.active_executions
WHERE tenant_id = $1::uuid AND status = 'PENDING'
ORDER BY created_at LIMIT $2
"""


class SqlLeases:
    """Claims, heartbeats and the sweeper's queries; see domain.executions.worker."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pool = PoolStatements(db)

    async def claim(
        self, ref: ExecutionRef, owner: str, lease_seconds: float, policy: ClaimPolicy
    ) -> ClaimOutcome:
        schema = ref.tenant_schema
        async with self.db.connect() as conn:
            sql = ConnectionStatements(conn)
            await sql.execute(_LOCK_TENANT, _CLAIM_LOCK_NS, ref.tenant_id)
            row = await sql.fetchrow(in_schema(_STATE, schema), ref.execution_id, ref.tenant_id)
            decision = policy.decide(_state(row))
            action = decision.action
            if action == ClaimAction.SKIP:
                return ClaimOutcome()
            if action == ClaimAction.FORGET:
                await sql.execute(_FORGET, ref.execution_id)
                await conn.commit()
                return ClaimOutcome()
            if action == ClaimAction.REQUEUE:
                requeued = await _requeue(sql, _REQUEUE_ANY, ref, dispatched=True)
                await conn.commit()
                return ClaimOutcome(changed=requeued)
            if action == ClaimAction.END:
                assert decision.status is not None and decision.event is not None
                ended = await end(sql, schema, ref.execution_id, decision.status, decision.error)
                event = NewEvent(decision.event, None, _now(), decision.event_data)
                stored = await execution_events.append(sql, schema, ref.execution_id, [event])
                assert ended is not None and stored is not None  # the row is locked
                await conn.commit()
                return ClaimOutcome(changed=ended, event=stored[0])
            claimed = await sql.fetchrow(
                in_schema(_START, schema),
                ref.execution_id,
                owner,
                timedelta(seconds=lease_seconds),
                decision.resume,
                decision.wake,
            )
            assert claimed is not None  # the row is locked
            await conn.commit()
        if claimed["flow_id"] is not None:
            nodes, edges = claimed["version_nodes"], claimed["version_edges"]
        else:
            graph = claimed["graph"]
            nodes, edges = graph["nodes"], graph["edges"]
        return ClaimOutcome(
            claim=Claim(
                ref=ref,
                graph=graph_from(nodes, edges),
                inputs=dict(claimed["inputs"] or {}),
                attempt=claimed["attempts"],
                elapsed=max(float(claimed["elapsed"] or 0.0), 0.0),
                cancel_requested=bool(claimed["cancel_requested"]),
                wake=decision.wake,
            ),
            changed=to_execution(claimed),
        )

    async def renew(self, ref: ExecutionRef, owner: str, lease_seconds: float) -> LeaseState | None:
        row = await self._pool.fetchrow(
            in_schema(_RENEW, ref.tenant_schema),
            ref.execution_id,
            owner,
            timedelta(seconds=lease_seconds),
        )
        if row is None:
            return None
        return LeaseState(cancel_requested=bool(row["cancel_requested"]))

    async def release(self, ref: ExecutionRef, owner: str) -> Execution | None:
        return await _requeue(self._pool, _REQUEUE_OWNED, ref, dispatched=False, owner=owner)

    async def expired(self, limit: int) -> list[ExecutionRef]:
        rows = await self._pool.fetch(_EXPIRED, limit)
        return [_ref(r) for r in rows]

    async def requeue_expired(self, ref: ExecutionRef) -> Execution | None:
        requeued = await _requeue(self._pool, _REQUEUE_EXPIRED, ref, dispatched=True)
        if requeued is None:
            await self._pool.execute(in_schema(_RESYNC_INDEX, ref.tenant_schema), ref.execution_id)
        return requeued

    async def stale_pending(self, redispatch_after: float, limit: int) -> list[ExecutionRef]:
        rows = await self._pool.fetch(_STALE_PENDING, timedelta(seconds=redispatch_after), limit)
        return [_ref(r) for r in sorted(rows, key=lambda r: r["created_at"])]

    async def expired_approvals(self, limit: int) -> list[ExecutionRef]:
        rows = await self._pool.fetch(_EXPIRED_APPROVALS, limit)
        return [_ref(r) for r in rows]

    async def expire_waiting(self, ref: ExecutionRef) -> Resumed | None:
        """Under the execution's row lock (so one process wins): the system answers the
        expired approvals of a WAITING execution, which resumes."""
        schema = ref.tenant_schema
        async with self.db.connect() as conn:
            sql = ConnectionStatements(conn)
            row = await approvals.lock_status(sql, schema, ref.execution_id)
            if row is None or row["status"] != ExecutionStatus.WAITING.value:
                return None
            expired = await approvals.expire(sql, schema, ref.execution_id)
            if not expired:
                await approvals.next_deadline(sql, schema, ref.execution_id)
                await conn.commit()
                return None
            resumed = await approvals.resume(
                sql, schema, ref.execution_id, {"nodeIds": expired, "reason": "timeout"}
            )
            await conn.commit()
        return resumed

    async def next_pending(self, tenant_id: str, limit: int) -> list[ExecutionRef]:
        rows = await self._pool.fetch(_NEXT_PENDING, tenant_id, limit)
        return [ExecutionRef(tenant_id, r["tenant_schema"], str(r["execution_id"])) for r in rows]


def _state(row: Row | None) -> ClaimState:
    if row is None:
        return ClaimState(status=None)
    return ClaimState(
        status=ExecutionStatus(row["status"]),
        lease_live=bool(row["lease_live"]),
        cancel_requested=bool(row["cancel_requested"]),
        attempts=int(row["attempts"]),
        running_elsewhere=int(row["running"]),
        max_running=int(row["max_running"]) if row["max_running"] is not None else None,
        wake=bool(row["resume_pending"]),
        tenant_suspended=bool(row["tenant_suspended"]),
    )


async def _requeue(
    sql: Statements,
    template: str,
    ref: ExecutionRef,
    *,
    dispatched: bool,
    owner: str | None = None,
) -> Execution | None:
    row = await sql.fetchrow(
        in_schema(template, ref.tenant_schema), ref.execution_id, dispatched, owner
    )
    return to_execution(row) if row is not None else None


def _ref(r: Row) -> ExecutionRef:
    return ExecutionRef(str(r["tenant_id"]), r["tenant_schema"], str(r["execution_id"]))


def _now() -> datetime:
    return datetime.now(UTC)

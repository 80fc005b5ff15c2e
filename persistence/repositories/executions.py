"""Executions in PostgreSQL: the repository (use cases), the engine's store, the leases.

- `SqlExecutions`: the tenant repository on a unit of work's connection.
- `SqlExecutionStore`: `domain.executions.ports.ExecutionStore` for one run, each call its
  own short transaction, fenced by the lease owner (a worker that lost its lease cannot
  write). `append_event` takes the next sequence with
  `UPDATE executions SET last_sequence = last_sequence + 1 ... RETURNING` (the row lock
  serialises writers until commit; a rolled-back insert rolls the counter back, so
  sequences have no gaps), commits, then publishes; appends of one execution are also
  serialised in the process so they are published in sequence order.
- `SqlLeases`: `domain.executions.worker.LeaseStore` (claim, renew, release, sweep).

`public.active_executions` mirrors every PENDING / RUNNING execution of every tenant (same
transaction as the tenant row): the sweeper and the per-tenant concurrency limit read it
instead of visiting every tenant schema.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.auth import is_uuid
from domain.executions.events import TERMINAL_EVENTS, EventType, ExecutionEvent
from domain.executions.ports import NodeResult
from domain.executions.records import Claim, Execution, ExecutionRef, LeaseState
from domain.executions.state import ExecutionStatus, NodeStatus, transition
from domain.executions.worker import LeaseLost
from domain.flows.model import FlowEdge, FlowGraph, FlowNode
from domain.ports import Page
from persistence import tables as t
from persistence.bus import RedisBus
from persistence.db import Database, check_schema_name
from persistence.pagination import paginate

log = logging.getLogger("crewgraph.executions")

X = t.executions
N = t.node_runs
EV = t.execution_events
A = t.active_executions

_CLAIM_LOCK_NS = 0x6367  # pg_advisory_xact_lock(namespace, hashtext(tenant id))
_TERMINAL_TYPES = [e.value for e in TERMINAL_EVENTS]


# --------------------------------------------------------------------------- mapping


def jsonable(value: Any) -> Any:
    """A value PostgreSQL jsonb accepts: non-JSON objects become strings, NaN null, NUL U+FFFD."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return _sanitize(value)
    return _sanitize(value) if "\\u0000" in text else value


def _sanitize(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k).replace("\x00", "\ufffd"): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_sanitize(v) for v in value]
    return str(value).replace("\x00", "\ufffd")


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value else value


def to_execution(r: Any) -> Execution:
    return Execution(
        id=str(r.id),
        status=ExecutionStatus(r.status),
        inputs=r.inputs if r.inputs is not None else {},
        created_at=r.created_at,
        flow_id=str(r.flow_id) if r.flow_id else None,
        flow_version=r.flow_version,
        crew_id=str(r.crew_id) if r.crew_id else None,
        outputs=r.outputs,
        error=r.error,
        cancel_requested=bool(r.cancel_requested),
        attempts=r.attempts,
        last_sequence=r.last_sequence,
        created_by=r.created_by,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


def to_event(r: Any) -> ExecutionEvent:
    return ExecutionEvent(
        execution_id=str(r.execution_id),
        sequence=r.sequence,
        type=EventType(r.type),
        node_id=r.node_id,
        at=r.at,
        data=r.data,
    )


def to_node_result(r: Any) -> NodeResult:
    return NodeResult(
        node_id=r.node_id,
        status=NodeStatus(r.status),
        output=r.output,
        error=r.error,
        started_at=r.started_at,
        finished_at=r.finished_at,
        attempts=r.attempts,
    )


def graph_json(graph: FlowGraph) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": n.id, "kind": n.kind, "name": n.name, "config": n.config} for n in graph.nodes
        ],
        "edges": [
            {"source": e.source, "target": e.target, "branch": e.branch} for e in graph.edges
        ],
    }


def graph_from(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> FlowGraph:
    return FlowGraph(
        tuple(FlowNode(n["id"], n["kind"], n.get("name"), n.get("config") or {}) for n in nodes),
        tuple(FlowEdge(e["source"], e["target"], e.get("branch")) for e in edges),
    )


async def _insert_event(
    conn: AsyncConnection,
    execution_id: str,
    sequence: int,
    type: EventType,
    node_id: str | None,
    data: dict[str, Any] | None,
) -> ExecutionEvent:
    event = ExecutionEvent(
        execution_id=execution_id,
        sequence=sequence,
        type=type,
        node_id=node_id,
        at=datetime.now(UTC),
        data=jsonable(data) if data is not None else None,
    )
    await conn.execute(
        EV.insert().values(
            execution_id=execution_id,
            sequence=sequence,
            type=type.value,
            node_id=node_id,
            at=event.at,
            data=event.data,
        )
    )
    return event


async def _next_sequence(
    conn: AsyncConnection, execution_id: str, owner: str | None = None
) -> int | None:
    stmt = (
        X.update()
        .where(X.c.id == execution_id)
        .values(last_sequence=X.c.last_sequence + 1)
        .returning(X.c.last_sequence)
    )
    if owner is not None:
        stmt = stmt.where(X.c.lease_owner == owner)
    return (await conn.execute(stmt)).scalar_one_or_none()


# --------------------------------------------------------------------------- repository


class SqlExecutions:
    """Executions of the connection's tenant (schema_translate_map)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, e: Execution, ref: ExecutionRef, graph: FlowGraph | None) -> None:
        await self._conn.execute(
            X.insert().values(
                id=e.id,
                flow_id=e.flow_id,
                flow_version=e.flow_version,
                crew_id=e.crew_id,
                graph=graph_json(graph) if graph is not None else None,
                status=e.status.value,
                inputs=e.inputs or {},
                created_by=e.created_by,
                created_at=e.created_at,
            )
        )
        await self._conn.execute(
            A.insert().values(
                execution_id=e.id,
                tenant_id=ref.tenant_id,
                tenant_schema=ref.tenant_schema,
                status=e.status.value,
                dispatched_at=sa.func.now(),
                created_at=e.created_at,
            )
        )

    async def get(self, ident: str, *, for_update: bool = False) -> Execution | None:
        if not is_uuid(ident):
            return None
        stmt = sa.select(X).where(X.c.id == ident)
        if for_update:
            stmt = stmt.with_for_update()
        row = (await self._conn.execute(stmt)).first()
        return to_execution(row) if row else None

    async def get_many(self, ids: Sequence[str]) -> dict[str, Execution]:
        wanted = [i for i in dict.fromkeys(ids) if is_uuid(i)]
        if not wanted:
            return {}
        rows = await self._conn.execute(sa.select(X).where(X.c.id.in_(wanted)))
        return {str(r.id): to_execution(r) for r in rows}

    async def page(
        self,
        first: int,
        after: str | None,
        *,
        status: ExecutionStatus | None = None,
        flow_id: str | None = None,
    ) -> Page[Execution]:
        stmt = sa.select(X)
        if status is not None:
            stmt = stmt.where(X.c.status == ExecutionStatus(status).value)
        if flow_id is not None:
            stmt = stmt.where(X.c.flow_id == flow_id)
        return await paginate(
            self._conn, stmt, X.c.created_at, X.c.id, first, after, to_execution, newest_first=True
        )

    async def node_runs(self, ids: Sequence[str]) -> dict[str, list[NodeResult]]:
        wanted = [i for i in dict.fromkeys(ids) if is_uuid(i)]
        out: dict[str, list[NodeResult]] = defaultdict(list)
        if not wanted:
            return out
        rows = await self._conn.execute(
            sa.select(N)
            .where(N.c.execution_id.in_(wanted))
            .order_by(
                N.c.execution_id,
                N.c.started_at.asc().nulls_last(),
                N.c.finished_at.asc().nulls_last(),
                N.c.node_id,
            )
        )
        for r in rows:
            out[str(r.execution_id)].append(to_node_result(r))
        return out

    async def events_after(
        self, execution_id: str, after: int, limit: int, before: int | None = None
    ) -> list[ExecutionEvent]:
        if not is_uuid(execution_id):
            return []
        stmt = sa.select(EV).where(EV.c.execution_id == execution_id, EV.c.sequence > after)
        if before is not None:
            stmt = stmt.where(EV.c.sequence < before)
        rows = await self._conn.execute(stmt.order_by(EV.c.sequence).limit(limit))
        return [to_event(r) for r in rows]

    async def head(self, execution_id: str) -> tuple[int, bool]:
        row = (
            await self._conn.execute(
                sa.select(X.c.last_sequence, EV.c.type)
                .select_from(
                    X.outerjoin(
                        EV, sa.and_(EV.c.execution_id == X.c.id, EV.c.sequence == X.c.last_sequence)
                    )
                )
                .where(X.c.id == execution_id)
            )
        ).first()
        if row is None:
            return 0, True
        return int(row.last_sequence), row.type in _TERMINAL_TYPES

    async def request_cancel(self, ident: str) -> None:
        await self._conn.execute(X.update().where(X.c.id == ident).values(cancel_requested=True))

    async def end_pending(
        self, ident: str, status: ExecutionStatus, error: str | None
    ) -> Execution:
        row = (
            await self._conn.execute(
                X.update()
                .where(X.c.id == ident, X.c.status == ExecutionStatus.PENDING.value)
                .values(
                    status=status.value,
                    error=_text(error),
                    finished_at=sa.func.now(),
                    lease_owner=None,
                    lease_expires_at=None,
                )
                .returning(*X.c)
            )
        ).first()
        if row is None:
            raise LeaseLost(f"execution {ident} is no longer PENDING")
        await self._conn.execute(
            N.update()
            .where(
                N.c.execution_id == ident,
                N.c.status.in_([NodeStatus.PENDING.value, NodeStatus.RUNNING.value]),
            )
            .values(status=NodeStatus.CANCELLED.value, finished_at=sa.func.now())
        )
        await self._conn.execute(A.delete().where(A.c.execution_id == ident))
        return to_execution(row)

    async def append_event(
        self, ident: str, type: EventType, node_id: str | None, data: dict[str, Any] | None
    ) -> ExecutionEvent:
        sequence = await _next_sequence(self._conn, ident)
        if sequence is None:
            raise LeaseLost(f"execution {ident} not found")
        return await _insert_event(self._conn, ident, sequence, type, node_id, data)

    async def count_active(self, tenant_id: str) -> int:
        return int(
            (
                await self._conn.execute(
                    sa.select(sa.func.count()).select_from(A).where(A.c.tenant_id == tenant_id)
                )
            ).scalar_one()
        )


# --------------------------------------------------------------------------- engine store
# The store's per-event statements run on the raw asyncpg pool (Database.raw): one
# autocommit statement each. `append_event` takes the next sequence and inserts the event
# in ONE statement (the UPDATE's row lock serialises writers until the statement commits;
# if the insert fails the increment rolls back with it, so sequences have no gaps).

_APPEND_EVENT = """
WITH s AS (
    UPDATE {s}.executions SET last_sequence = last_sequence + 1
    WHERE id = $1::uuid AND lease_owner = $2
    RETURNING last_sequence
)
INSERT INTO {s}.execution_events (execution_id, sequence, type, node_id, at, data)
SELECT $1::uuid, s.last_sequence, $3, $4, $5, $6::jsonb FROM s
RETURNING sequence
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
"""

_LOAD_NODES = """
SELECT node_id, status, output, error, attempts, started_at, finished_at
FROM {s}.node_runs
WHERE execution_id = $1::uuid AND status IN ('COMPLETED', 'SKIPPED')
"""


@lru_cache(maxsize=4096)
def _sql(template: str, schema: str) -> str:
    return template.format(s=f'"{check_schema_name(schema)}"')


class _Row:
    """An asyncpg record read like a SQLAlchemy row (attribute access), jsonb decoded."""

    def __init__(self, record: Any) -> None:
        self._r = record

    def __getattr__(self, name: str) -> Any:
        value = self._r[name]
        if name == "output" and isinstance(value, str):
            return json.loads(value)
        return value


def json_text(value: Any) -> str:
    """JSON for a jsonb parameter (see `jsonable`)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_sanitize(value))
    return json.dumps(_sanitize(value)) if "\\u0000" in text else text


class SqlExecutionStore:
    """The engine's store for runs of one tenant, fenced by the worker's lease."""

    def __init__(self, db: Database, bus: RedisBus, ref: ExecutionRef, owner: str) -> None:
        self.db = db
        self.bus = bus
        self.ref = ref
        self.owner = owner
        self._append_lock = asyncio.Lock()

    async def load_node_results(self, execution_id: str) -> dict[str, NodeResult]:
        pool = await self.db.raw()
        rows = await pool.fetch(_sql(_LOAD_NODES, self.ref.tenant_schema), execution_id)
        return {r["node_id"]: to_node_result(_Row(r)) for r in rows}

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None:
        pool = await self.db.raw()
        status = await pool.execute(
            _sql(_SAVE_NODE, self.ref.tenant_schema),
            execution_id,
            self.owner,
            result.node_id,
            NodeStatus(result.status).value,
            json_text(result.output) if result.output is not None else None,
            _text(result.error),
            result.attempts,
            result.started_at,
            result.finished_at,
        )
        if status.endswith(" 0"):  # "INSERT 0 0": the lease is not ours (any more)
            raise LeaseLost(f"execution {execution_id}: lease lost")

    async def append_event(
        self,
        execution_id: str,
        type: EventType,
        node_id: str | None,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent:
        at = datetime.now(UTC)
        payload = json_text(data) if data is not None else None
        async with self._append_lock:
            pool = await self.db.raw()
            sequence = await pool.fetchval(
                _sql(_APPEND_EVENT, self.ref.tenant_schema),
                execution_id,
                self.owner,
                type.value,
                node_id,
                at,
                payload,
            )
            if sequence is None:
                raise LeaseLost(f"execution {execution_id}: lease lost")
            event = ExecutionEvent(
                execution_id=execution_id,
                sequence=sequence,
                type=type,
                node_id=node_id,
                at=at,
                data=json.loads(payload) if payload is not None else None,
            )
            try:
                await self.bus.publish_event(self.ref.tenant_id, event)
            except Exception:
                # Stored is what counts: subscribers poll the log when the bus is quiet.
                log.exception("publishing an event failed")
            return event

    async def finish(
        self,
        execution_id: str,
        status: ExecutionStatus,
        outputs: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        transition(ExecutionStatus.RUNNING, status)
        async with self.db.connect(self.ref.tenant_schema) as conn:
            row = (
                await conn.execute(
                    X.update()
                    .where(
                        X.c.id == execution_id,
                        X.c.lease_owner == self.owner,
                        X.c.status == ExecutionStatus.RUNNING.value,
                    )
                    .values(
                        status=status.value,
                        outputs=jsonable(outputs),
                        error=_text(error),
                        finished_at=sa.func.now(),
                        lease_expires_at=None,
                    )
                    .returning(*X.c)
                )
            ).first()
            if row is None:
                raise LeaseLost(f"execution {execution_id}: lease lost")
            await conn.execute(A.delete().where(A.c.execution_id == execution_id))
            await conn.commit()
        await _publish_status(self.bus, self.ref.tenant_id, to_execution(row))


async def _publish_status(bus: RedisBus, tenant_id: str, execution: Execution) -> None:
    try:
        await bus.publish_status(tenant_id, execution)
    except Exception:
        log.exception("publishing a status change failed")


# --------------------------------------------------------------------------- leases


class SqlLeases:
    """Claims, heartbeats and the sweeper's queries; see domain.executions.worker."""

    def __init__(self, db: Database, bus: RedisBus) -> None:
        self.db = db
        self.bus = bus

    async def claim(
        self,
        ref: ExecutionRef,
        owner: str,
        lease_seconds: float,
        *,
        max_running: int,
        max_attempts: int,
    ) -> Claim | None:
        terminal_event: ExecutionEvent | None = None
        async with self.db.connect(ref.tenant_schema) as conn:
            await conn.execute(
                sa.select(
                    sa.func.pg_advisory_xact_lock(_CLAIM_LOCK_NS, sa.func.hashtext(ref.tenant_id))
                )
            )
            row = (
                await conn.execute(
                    sa.select(
                        X,
                        sa.func.now().label("db_now"),
                    )
                    .where(X.c.id == ref.execution_id)
                    .with_for_update(of=X)
                )
            ).first()
            if row is None:
                await conn.execute(A.delete().where(A.c.execution_id == ref.execution_id))
                await conn.commit()
                return None
            status = ExecutionStatus(row.status)
            if status not in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING):
                await conn.execute(A.delete().where(A.c.execution_id == ref.execution_id))
                await conn.commit()
                return None
            if status == ExecutionStatus.RUNNING:
                if row.lease_expires_at is not None and row.lease_expires_at > row.db_now:
                    return None  # someone holds it
                await _nodes_back_to_pending(conn, ref.execution_id)
            ended: Execution | None = None
            if row.cancel_requested:
                ended = await _end(conn, ref.execution_id, ExecutionStatus.CANCELLED, None)
                terminal_event = await _append(
                    conn, ref.execution_id, EventType.EXECUTION_CANCELLED, {"cancelledNodes": []}
                )
            elif row.attempts >= max_attempts:
                error = (
                    f"gave up after {row.attempts} attempts: the worker running it stopped "
                    "each time"
                )
                ended = await _end(conn, ref.execution_id, ExecutionStatus.FAILED, error)
                terminal_event = await _append(
                    conn,
                    ref.execution_id,
                    EventType.EXECUTION_FAILED,
                    {"error": error, "nodeId": None},
                )
            if ended is not None:
                await conn.commit()
                await _publish_status(self.bus, ref.tenant_id, ended)
                if terminal_event is not None:
                    try:
                        await self.bus.publish_event(ref.tenant_id, terminal_event)
                    except Exception:
                        log.exception("publishing an event failed")
                return None
            running = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(A)
                    .where(
                        A.c.tenant_id == ref.tenant_id,
                        A.c.status == ExecutionStatus.RUNNING.value,
                        A.c.execution_id != ref.execution_id,
                    )
                )
            ).scalar_one()
            if running >= max_running:
                if status == ExecutionStatus.RUNNING:  # an expired lease: requeue it
                    await _requeue(conn, ref.execution_id)
                    await conn.commit()
                return None
            expires = sa.func.now() + timedelta(seconds=lease_seconds)
            claimed = (
                await conn.execute(
                    X.update()
                    .where(X.c.id == ref.execution_id)
                    .values(
                        status=ExecutionStatus.RUNNING.value,
                        lease_owner=owner,
                        lease_expires_at=expires,
                        attempts=X.c.attempts + 1,
                        started_at=sa.func.coalesce(X.c.started_at, sa.func.now()),
                    )
                    .returning(
                        *X.c,
                        sa.func.extract(
                            "epoch", sa.func.now() - sa.func.coalesce(X.c.started_at, sa.func.now())
                        ).label("elapsed"),
                    )
                )
            ).first()
            assert claimed is not None
            await conn.execute(
                A.update()
                .where(A.c.execution_id == ref.execution_id)
                .values(status=ExecutionStatus.RUNNING.value, lease_expires_at=expires)
            )
            if claimed.flow_id is not None:
                version = (
                    await conn.execute(
                        sa.select(t.flow_versions.c.nodes, t.flow_versions.c.edges).where(
                            t.flow_versions.c.flow_id == claimed.flow_id,
                            t.flow_versions.c.version == claimed.flow_version,
                        )
                    )
                ).one()
                graph = graph_from(version.nodes, version.edges)
            else:
                graph = graph_from(claimed.graph["nodes"], claimed.graph["edges"])
            await conn.commit()
        execution = to_execution(claimed)
        await _publish_status(self.bus, ref.tenant_id, execution)
        return Claim(
            ref=ref,
            graph=graph,
            inputs=dict(claimed.inputs or {}),
            attempt=claimed.attempts,
            elapsed=float(claimed.elapsed or 0.0),
            cancel_requested=bool(claimed.cancel_requested),
        )

    async def renew(self, ref: ExecutionRef, owner: str, lease_seconds: float) -> LeaseState | None:
        expires = sa.func.now() + timedelta(seconds=lease_seconds)
        running = X.c.status == ExecutionStatus.RUNNING.value
        async with self.db.connect(ref.tenant_schema) as conn:
            row = (
                await conn.execute(
                    X.update()
                    .where(X.c.id == ref.execution_id, X.c.lease_owner == owner)
                    .values(
                        lease_expires_at=sa.case((running, expires), else_=X.c.lease_expires_at)
                    )
                    .returning(X.c.cancel_requested, X.c.status, X.c.lease_expires_at)
                )
            ).first()
            if row is None:
                return None
            if row.status == ExecutionStatus.RUNNING.value:
                await conn.execute(
                    A.update()
                    .where(A.c.execution_id == ref.execution_id)
                    .values(lease_expires_at=row.lease_expires_at)
                )
            await conn.commit()
        return LeaseState(cancel_requested=bool(row.cancel_requested))

    async def release(self, ref: ExecutionRef, owner: str) -> bool:
        async with self.db.connect(ref.tenant_schema) as conn:
            row = (
                await conn.execute(
                    sa.select(X.c.id)
                    .where(
                        X.c.id == ref.execution_id,
                        X.c.lease_owner == owner,
                        X.c.status == ExecutionStatus.RUNNING.value,
                    )
                    .with_for_update()
                )
            ).first()
            if row is None:
                return False
            execution = await _requeue(conn, ref.execution_id, dispatched=False)
            await conn.commit()
        await _publish_status(self.bus, ref.tenant_id, execution)
        return True

    async def sweep(self, redispatch_after: float, limit: int) -> list[ExecutionRef]:
        async with self.db.connect() as conn:
            expired = (
                await conn.execute(
                    sa.select(A.c.execution_id, A.c.tenant_id, A.c.tenant_schema)
                    .where(
                        A.c.status == ExecutionStatus.RUNNING.value,
                        A.c.lease_expires_at < sa.func.now(),
                    )
                    .order_by(A.c.lease_expires_at)
                    .limit(limit)
                )
            ).all()
        refs: list[ExecutionRef] = []
        for r in expired:
            ref = ExecutionRef(str(r.tenant_id), r.tenant_schema, str(r.execution_id))
            try:
                if await self._requeue_expired(ref):
                    refs.append(ref)
            except Exception:
                log.exception("requeueing an expired execution failed")
        async with self.db.connect() as conn:
            stale = (
                sa.select(A.c.execution_id)
                .where(
                    A.c.status == ExecutionStatus.PENDING.value,
                    sa.or_(
                        A.c.dispatched_at.is_(None),
                        A.c.dispatched_at < sa.func.now() - timedelta(seconds=redispatch_after),
                    ),
                )
                .order_by(A.c.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            rows = (
                await conn.execute(
                    A.update()
                    .where(A.c.execution_id.in_(stale.scalar_subquery()))
                    .values(dispatched_at=sa.func.now())
                    .returning(A.c.execution_id, A.c.tenant_id, A.c.tenant_schema, A.c.created_at)
                )
            ).all()
            await conn.commit()
        known = {ref.execution_id for ref in refs}
        for r in sorted(rows, key=lambda r: r.created_at):
            if str(r.execution_id) not in known:
                refs.append(ExecutionRef(str(r.tenant_id), r.tenant_schema, str(r.execution_id)))
        return refs

    async def _requeue_expired(self, ref: ExecutionRef) -> bool:
        async with self.db.connect(ref.tenant_schema) as conn:
            row = (
                await conn.execute(
                    sa.select(X.c.id)
                    .where(
                        X.c.id == ref.execution_id,
                        X.c.status == ExecutionStatus.RUNNING.value,
                        X.c.lease_expires_at < sa.func.now(),
                    )
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if row is None:
                # Not expired after all (renewed meanwhile), or gone: fix the index.
                current = (
                    await conn.execute(
                        sa.select(X.c.status, X.c.lease_expires_at).where(
                            X.c.id == ref.execution_id
                        )
                    )
                ).first()
                if current is None or current.status not in ("PENDING", "RUNNING"):
                    await conn.execute(A.delete().where(A.c.execution_id == ref.execution_id))
                elif current.status == "RUNNING":
                    await conn.execute(
                        A.update()
                        .where(A.c.execution_id == ref.execution_id)
                        .values(lease_expires_at=current.lease_expires_at)
                    )
                await conn.commit()
                return False
            execution = await _requeue(conn, ref.execution_id)
            await conn.commit()
        log.warning("lease expired; execution requeued", extra={"execution_id": ref.execution_id})
        await _publish_status(self.bus, ref.tenant_id, execution)
        return True

    async def next_pending(self, tenant_id: str, limit: int) -> list[ExecutionRef]:
        async with self.db.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(A.c.execution_id, A.c.tenant_schema)
                    .where(A.c.tenant_id == tenant_id, A.c.status == ExecutionStatus.PENDING.value)
                    .order_by(A.c.created_at)
                    .limit(limit)
                )
            ).all()
        return [ExecutionRef(tenant_id, r.tenant_schema, str(r.execution_id)) for r in rows]


async def _nodes_back_to_pending(conn: AsyncConnection, execution_id: str) -> None:
    """Nodes that were RUNNING on a worker that vanished run again (RUNNING -> PENDING)."""
    await conn.execute(
        N.update()
        .where(N.c.execution_id == execution_id, N.c.status == NodeStatus.RUNNING.value)
        .values(status=NodeStatus.PENDING.value)
    )


async def _requeue(
    conn: AsyncConnection, execution_id: str, *, dispatched: bool = True
) -> Execution:
    """RUNNING -> PENDING (lease expired or released); the caller holds the row lock."""
    row = (
        await conn.execute(
            X.update()
            .where(X.c.id == execution_id)
            .values(status=ExecutionStatus.PENDING.value, lease_owner=None, lease_expires_at=None)
            .returning(*X.c)
        )
    ).one()
    await _nodes_back_to_pending(conn, execution_id)
    await conn.execute(
        A.update()
        .where(A.c.execution_id == execution_id)
        .values(
            status=ExecutionStatus.PENDING.value,
            lease_expires_at=None,
            dispatched_at=sa.func.now() if dispatched else None,
        )
    )
    return to_execution(row)


async def _end(
    conn: AsyncConnection, execution_id: str, status: ExecutionStatus, error: str | None
) -> Execution:
    row = (
        await conn.execute(
            X.update()
            .where(X.c.id == execution_id)
            .values(
                status=status.value,
                error=_text(error),
                finished_at=sa.func.now(),
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(*X.c)
        )
    ).one()
    await conn.execute(
        N.update()
        .where(
            N.c.execution_id == execution_id,
            N.c.status.in_([NodeStatus.PENDING.value, NodeStatus.RUNNING.value]),
        )
        .values(status=NodeStatus.CANCELLED.value, finished_at=sa.func.now())
    )
    await conn.execute(A.delete().where(A.c.execution_id == execution_id))
    return to_execution(row)


async def _append(
    conn: AsyncConnection, execution_id: str, type: EventType, data: dict[str, Any] | None
) -> ExecutionEvent:
    sequence = await _next_sequence(conn, execution_id)
    assert sequence is not None
    return await _insert_event(conn, execution_id, sequence, type, None, data)

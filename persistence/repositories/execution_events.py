"""The event log of executions: the one way sequences are allocated, and the reads.

`append` stores a batch of events in ONE statement: it moves the execution's
`last_sequence` forward by the batch size (the UPDATE's row lock serialises writers
until commit) and inserts the events under the sequences it skipped over. If the insert
fails the increment rolls back with it, so sequences have no gaps; when `owner` is given
the UPDATE only matches while that worker holds the lease (fenced writes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from domain.auth import is_uuid
from domain.executions.events import TERMINAL_EVENTS, ExecutionEvent, NewEvent
from domain.executions.ports import NodeResult
from domain.executions.state import NodeStatus
from domain.webhooks import WEBHOOK_EVENT_TYPES
from persistence.repositories.execution_rows import clean_text, json_param, to_event
from persistence.repositories.sql import Statements, in_schema
from persistence.repositories.webhooks import OUTBOX_CTES

_TERMINAL_TYPES = frozenset(e.value for e in TERMINAL_EVENTS)

_APPEND = """
WITH s AS (
    UPDATE {s}.executions SET last_sequence = last_sequence + cardinality($3::text[])
    WHERE id = $1::uuid AND ($2::text IS NULL OR lease_owner = $2::text)
    RETURNING last_sequence
)
INSERT INTO {s}.execution_events (execution_id, sequence, type, node_id, at, data)
SELECT $1::uuid, (s.last_sequence - cardinality($3::text[]) + e.n)::int,
       e.type, e.node_id, e.at, e.data
FROM s, unnest($3::text[], $4::text[], $5::timestamptz[], $6::jsonb[])
     WITH ORDINALITY AS e(type, node_id, at, data, n)
RETURNING sequence
"""

# The same insert when the batch holds an event webhooks hear about: the statement also
# writes the outbox (persistence/repositories/webhooks.py), so a delivery exists exactly
# when its event was committed.
_APPEND_NOTIFY = (
    """
WITH s AS (
    UPDATE {s}.executions SET last_sequence = last_sequence + cardinality($3::text[])
    WHERE id = $1::uuid AND ($2::text IS NULL OR lease_owner = $2::text)
    RETURNING id, last_sequence, flow_id, flow_version, crew_id, status
), ev AS (
    INSERT INTO {s}.execution_events (execution_id, sequence, type, node_id, at, data)
    SELECT $1::uuid, (s.last_sequence - cardinality($3::text[]) + e.n)::int,
           e.type, e.node_id, e.at, e.data
    FROM s, unnest($3::text[], $4::text[], $5::timestamptz[], $6::jsonb[])
         WITH ORDINALITY AS e(type, node_id, at, data, n)
    RETURNING sequence, type, at, data
)"""
    + OUTBOX_CTES
    + "SELECT sequence FROM ev"
)

# With a node's result: its upsert rides on the same statement (the engine's node writes
# are one round trip). It reads the lease-fenced `s`, so a lost lease writes neither.
_NODE_CTE = """, n AS (
    INSERT INTO {{s}}.node_runs
        (execution_id, node_id, status, output, error, attempts, started_at, finished_at)
    SELECT $1::uuid, ${0}, ${1}, ${2}::jsonb, ${3}, ${4}, ${5}, ${6} FROM s
    ON CONFLICT (execution_id, node_id) DO UPDATE SET
        status = EXCLUDED.status, output = EXCLUDED.output, error = EXCLUDED.error,
        attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at
)
"""


def _with_node(template: str, first_param: int) -> str:
    """`template` with the node upsert as a CTE right after its first one (`s`)."""
    end = template.index("\n)\n") + 2
    numbers = range(first_param, first_param + 7)
    return template[:end] + _NODE_CTE.format(*numbers) + template[end + 1 :]


_APPEND_NODE = _with_node(_APPEND, 7)
_APPEND_NOTIFY_NODE = _with_node(_APPEND_NOTIFY, 8)

_AFTER = """
SELECT execution_id, sequence, type, node_id, at, data FROM {s}.execution_events
WHERE execution_id = $1::uuid AND sequence > $2 AND sequence < $3
ORDER BY sequence LIMIT $4
"""

_HEAD = """
SELECT x.last_sequence, e.type FROM {s}.executions x
LEFT JOIN {s}.execution_events e ON e.execution_id = x.id AND e.sequence = x.last_sequence
WHERE x.id = $1::uuid
"""

_NO_UPPER_BOUND = 2**31 - 1


async def append(
    sql: Statements,
    schema: str,
    execution_id: str,
    events: Sequence[NewEvent],
    owner: str | None = None,
    node: NodeResult | None = None,
) -> list[ExecutionEvent] | None:
    """Store `events` in order (and `node`'s result with them); None when the execution
    is gone or (with `owner`) the lease is not `owner`'s."""
    payloads = [json_param(e.data) for e in events]
    args: list[object] = [
        execution_id,
        owner,
        [e.type.value for e in events],
        [e.node_id for e in events],
        [e.at for e in events],
        payloads,
    ]
    notify = any(e.type.value in WEBHOOK_EVENT_TYPES for e in events)
    template = _APPEND_NOTIFY if notify else _APPEND
    if notify:
        args.append(schema)
    if node is not None:
        template = _APPEND_NOTIFY_NODE if notify else _APPEND_NODE
        args += [
            node.node_id,
            NodeStatus(node.status).value,
            json_param(node.output),
            clean_text(node.error),
            node.attempts,
            node.started_at,
            node.finished_at,
        ]
    rows = await sql.fetch(in_schema(template, schema), *args)
    if not rows:
        return None
    first = min(r["sequence"] for r in rows)
    return [
        ExecutionEvent(
            execution_id=execution_id,
            sequence=first + i,
            type=e.type,
            node_id=e.node_id,
            at=e.at,
            data=json.loads(payload) if payload is not None else None,
        )
        for i, (e, payload) in enumerate(zip(events, payloads, strict=True))
    ]


async def events_after(
    sql: Statements,
    schema: str,
    execution_id: str,
    after: int,
    limit: int,
    before: int | None = None,
) -> list[ExecutionEvent]:
    if not is_uuid(execution_id):
        return []
    upper = _NO_UPPER_BOUND if before is None else before
    rows = await sql.fetch(in_schema(_AFTER, schema), execution_id, after, upper, limit)
    return [to_event(r) for r in rows]


async def head(sql: Statements, schema: str, execution_id: str) -> tuple[int, bool]:
    """(last sequence, whether that event is terminal); (0, True) for an unknown id."""
    if not is_uuid(execution_id):
        return 0, True
    row = await sql.fetchrow(in_schema(_HEAD, schema), execution_id)
    if row is None:
        return 0, True
    return int(row["last_sequence"]), row["type"] in _TERMINAL_TYPES

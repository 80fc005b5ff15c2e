"""Chat sessions in the tenant schema: the counter and reply lock change under a row lock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from domain.auth import is_uuid
from domain.chat.model import ChatSession
from domain.ports import Page
from persistence import tables as t
from persistence.db import Database
from persistence.pagination import paginate
from persistence.repositories.quotas import lock_chat_sessions

T = TypeVar("T")
_s = t.chat_sessions

# What `change` may alter: everything else of a session is fixed at creation.
_MUTABLE = (
    "message_count",
    "last_seq",
    "reply_id",
    "reply_owner",
    "reply_expires_at",
    "cancel_requested",
)


def _session(r: Any) -> ChatSession:
    return ChatSession(
        id=str(r.id),
        title=r.title,
        llm_provider_id=str(r.llm_provider_id) if r.llm_provider_id else None,
        agent_id=str(r.agent_id) if r.agent_id else None,
        system_prompt=r.system_prompt,
        message_limit=int(r.message_limit),
        created_at=r.created_at,
        message_count=int(r.message_count),
        last_seq=int(r.last_seq),
        reply_id=str(r.reply_id) if r.reply_id else None,
        reply_owner=r.reply_owner,
        reply_expires_at=r.reply_expires_at,
        cancel_requested=bool(r.cancel_requested),
        created_by=r.created_by,
        tenant_suspended=bool(getattr(r, "tenant_suspended", False)),
    )


def _tenant_suspended(tenant_schema: str) -> sa.ColumnElement[bool]:
    """Whether the operator suspended the schema's tenant, read in the statement that
    locks the session: a reply accepted just before the suspension committed is claimed
    after it, so its claim sees the suspension."""
    status = (
        sa.select(t.tenants.c.status == "SUSPENDED")
        .where(t.tenants.c.schema_name == tenant_schema)
        .scalar_subquery()
    )
    return sa.func.coalesce(status, sa.false()).label("tenant_suspended")


class SqlChatSessions:
    """`ChatSessionStore`: each call is one short transaction on the tenant's schema."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, tenant_schema: str, session: ChatSession, *, max_sessions: int = 0) -> bool:
        async with self._db.connect(tenant_schema) as conn:
            if max_sessions > 0 and await lock_chat_sessions(conn, tenant_schema) >= max_sessions:
                await conn.rollback()
                return False
            await conn.execute(
                _s.insert().values(
                    id=session.id,
                    title=session.title,
                    llm_provider_id=session.llm_provider_id,
                    agent_id=session.agent_id,
                    system_prompt=session.system_prompt,
                    message_limit=session.message_limit,
                    created_by=session.created_by,
                    created_at=session.created_at,
                )
            )
            await conn.commit()
        return True

    async def get(self, tenant_schema: str, session_id: str) -> ChatSession | None:
        if not is_uuid(session_id):
            return None
        async with self._db.connect(tenant_schema) as conn:
            row = (await conn.execute(sa.select(_s).where(_s.c.id == session_id))).first()
        return _session(row) if row is not None else None

    async def tenant_schema(self, tenant_id: str) -> str | None:
        if not is_uuid(tenant_id):
            return None
        async with self._db.connect() as conn:
            stmt = sa.select(t.tenants.c.schema_name).where(t.tenants.c.id == tenant_id)
            found = (await conn.execute(stmt)).scalar_one_or_none()
        return str(found) if found is not None else None

    async def replying(self, tenant_schema: str) -> list[str]:
        async with self._db.connect(tenant_schema) as conn:
            rows = await conn.execute(sa.select(_s.c.id).where(_s.c.reply_id.is_not(None)))
            return [str(r.id) for r in rows]

    async def page(self, tenant_schema: str, first: int, after: str | None) -> Page[ChatSession]:
        async with self._db.connect(tenant_schema) as conn:
            return await paginate(
                conn, sa.select(_s), _s.c.created_at, _s.c.id, first, after, _session
            )

    async def delete(self, tenant_schema: str, session_id: str) -> bool:
        if not is_uuid(session_id):
            return False
        async with self._db.connect(tenant_schema) as conn:
            result = await conn.execute(_s.delete().where(_s.c.id == session_id))
            await conn.commit()
        return bool(result.rowcount)

    async def change(
        self, tenant_schema: str, session_id: str, change: Callable[[ChatSession], T]
    ) -> T | None:
        if not is_uuid(session_id):
            return None
        async with self._db.connect(tenant_schema) as conn:
            stmt = (
                sa.select(_s, _tenant_suspended(tenant_schema))
                .where(_s.c.id == session_id)
                .with_for_update(of=_s)
            )
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            session = _session(row)
            before = {name: getattr(session, name) for name in _MUTABLE}
            outcome = change(session)  # raises to refuse: nothing is stored
            after = {name: getattr(session, name) for name in _MUTABLE}
            changed = {k: v for k, v in after.items() if before[k] != v}
            if changed:
                await conn.execute(_s.update().where(_s.c.id == session_id).values(**changed))
            await conn.commit()
        return outcome

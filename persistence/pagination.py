"""Keyset pagination on (created_at, id): stable when rows are inserted meanwhile."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.errors import BadUserInput
from domain.ports import Page

T = TypeVar("T")


def encode_cursor(created_at: datetime, ident: str) -> str:
    raw = json.dumps([created_at.isoformat(), ident]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(ts), str(ident)
    except Exception:
        raise BadUserInput("invalid cursor", {"after": "is not a cursor returned by this API"})


async def paginate(
    conn: AsyncConnection,
    stmt: sa.Select[Any],
    created_col: sa.ColumnElement[Any],
    id_col: sa.ColumnElement[Any],
    first: int,
    after: str | None,
    to_item: Callable[[Any], T],
    *,
    newest_first: bool = False,
) -> Page[T]:
    if after:
        ts, ident = decode_cursor(after)
        key = sa.tuple_(created_col, sa.cast(id_col, sa.Text))
        bound = sa.tuple_(sa.literal(ts), sa.literal(ident))
        stmt = stmt.where(key < bound if newest_first else key > bound)
    order = (
        (created_col.desc(), sa.cast(id_col, sa.Text).desc())
        if newest_first
        else (created_col.asc(), sa.cast(id_col, sa.Text).asc())
    )
    rows: Sequence[Any] = (await conn.execute(stmt.order_by(*order).limit(first + 1))).all()
    items = [(to_item(r), encode_cursor(r.created_at, str(r.id))) for r in rows[:first]]
    return Page(items=items, has_next_page=len(rows) > first)

"""Relay connections (edges/node/cursor/pageInfo) built from domain pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import strawberry

from domain.ports import Page

N = TypeVar("N")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None
    # Backward pagination (`last`/`before`); forward connections report no previous page.
    has_previous_page: bool = False
    start_cursor: str | None = None


@strawberry.type
class Edge(Generic[N]):
    node: N
    cursor: str


@strawberry.type
class Connection(Generic[N]):
    edges: list[Edge[N]]
    page_info: PageInfo


def connection(page: Page[Any], to_node: Callable[[Any], N]) -> Connection[N]:
    return Connection(
        edges=[Edge(node=to_node(item), cursor=cursor) for item, cursor in page.items],
        page_info=PageInfo(
            has_next_page=page.has_next_page,
            end_cursor=page.end_cursor,
            start_cursor=page.items[0][1] if page.items else None,
        ),
    )

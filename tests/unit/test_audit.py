"""The audit use cases with fakes: what an entry holds, and that recording never fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from domain.audit import (
    MAX_DATA_KEYS,
    MAX_TEXT_LENGTH,
    AuditEntry,
    AuditService,
    bind_origin,
    current_origin,
)
from domain.errors import Forbidden
from domain.identity import Principal
from domain.ports import Page
from domain.rbac import Role

AT = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


class Sink:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []
        self.pages: list[tuple[str, int, str | None, str | None]] = []

    def put(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    async def page(
        self, tenant_id: str, first: int, after: str | None, action: str | None
    ) -> Page[AuditEntry]:
        self.pages.append((tenant_id, first, after, action))
        return Page(items=[], has_next_page=False)


class Broken(Sink):
    def put(self, entry: AuditEntry) -> None:
        raise RuntimeError("disk on fire")


def admin(**kw: object) -> Principal:
    return Principal("t1", "tenant_000000000001", Role.ADMIN, **kw)  # type: ignore[arg-type]


async def test_an_entry_carries_actor_origin_and_small_data() -> None:
    sink = Sink()
    service = AuditService(sink, sink, clock=lambda: AT)

    async def request() -> None:
        bind_origin("203.0.113.9", "req-1")
        service.record(
            "t1",
            "tool.created",
            principal=admin(user_id="u1", actor_name="ada@example.com"),
            target="tool-1",
            data={
                "name": "x" * 1000,
                "n": 3,
                "nested": {"a": 1},
                **{f"k{i}": i for i in range(50)},
            },
        )

    await asyncio.create_task(request())  # the origin stays with that request's task
    assert current_origin().ip is None
    [entry] = sink.entries
    assert (entry.tenant_id, entry.action, entry.target) == ("t1", "tool.created", "tool-1")
    assert entry.actor == "ada@example.com"
    assert (entry.ip, entry.request_id) == ("203.0.113.9", "req-1")
    assert entry.at == AT.replace(microsecond=123000)  # what a store keeps
    assert len(entry.data) == MAX_DATA_KEYS
    assert len(str(entry.data["name"])) == MAX_TEXT_LENGTH
    assert entry.data["n"] == 3 and entry.data["nested"] == "{'a': 1}"


def test_actor_falls_back_to_ids_and_system_is_none() -> None:
    sink = Sink()
    service = AuditService(sink, sink)
    service.record("t1", "a", principal=admin(user_id="u1"))
    service.record("t1", "a", principal=admin(api_key_id="k1"))
    service.record("t1", "a")
    service.record("t1", "a", actor="ops@example.com", principal=admin(user_id="u1"))
    assert [e.actor for e in sink.entries] == ["user:u1", "apikey:k1", None, "ops@example.com"]
    ids = [e.id for e in sink.entries]
    assert ids == sorted(ids) and len(set(ids)) == 4  # recording order


def test_recording_never_raises() -> None:
    broken = Broken()
    AuditService(broken, broken).record("t1", "auth.login")  # logged, not raised


async def test_only_admins_read_and_only_their_tenant() -> None:
    sink = Sink()
    service = AuditService(sink, sink)
    await service.entries(admin(user_id="u1"), 10, None, "  tool.created ")
    assert sink.pages == [("t1", 10, None, "tool.created")]
    for role in (Role.MEMBER, Role.VIEWER):
        with pytest.raises(Forbidden):
            await service.entries(Principal("t1", "s", role, user_id="u"), 10, None)


def test_provider_entries_never_carry_url_credentials() -> None:
    from domain.providers import _without_secrets

    assert _without_secrets("https://u:secret@llm.example.com:8443/v1?key=k#f") == (
        "https://llm.example.com:8443/v1"
    )
    assert _without_secrets("crewgraph:local") == "crewgraph:local"
    assert _without_secrets(None) is None

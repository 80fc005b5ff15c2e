"""LlmService (domain/llm_calls.py) with in-memory fakes: failover, usage, keys, tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any

import pytest

from domain.errors import BadUserInput, Forbidden, NotFound
from domain.identity import Principal
from domain.llm import (
    LlmCallFailed,
    LlmReply,
    LlmRequest,
    LlmTarget,
    TokenCallback,
    Usage,
    UsageDay,
    UsageRecord,
)
from domain.llm_calls import MAX_REPLY_CHARS, CallScope, LlmService
from domain.providers import LOCAL_BASE_URL, LlmProvider
from domain.rbac import Role
from domain.secrets import Sealed
from domain.usage import UsageService

TENANT = "tenant_test"


class FakeBox:
    current_key_id = "k1"

    def seal(self, plaintext: str, context: str) -> Sealed:
        return Sealed("k1", f"{context}|{plaintext}".encode())

    def open(self, sealed: Sealed, context: str) -> str:
        stored_context, _, plaintext = sealed.blob.decode().partition("|")
        assert stored_context == context, "the key is bound to its tenant and provider"
        return plaintext


class FakeProviders:
    def __init__(self, providers: list[LlmProvider]) -> None:
        self.rows = {p.id: p for p in providers}

    async def get(self, ident: str, *, for_update: bool = False) -> LlmProvider | None:
        return self.rows.get(ident)

    async def get_many(self, ids: Sequence[str]) -> dict[str, LlmProvider]:
        return {i: self.rows[i] for i in ids if i in self.rows}


class FakeUow:
    def __init__(self, providers: FakeProviders) -> None:
        self.providers = providers

    async def __aenter__(self) -> FakeUow:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class FakeUsage:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    async def record(self, tenant_schema: str, record: UsageRecord) -> None:
        await asyncio.sleep(0)
        self.records.append(record)


class ScriptedClient:
    """Answers per model name: "ok", "fail:<kind>", "stream-then-fail", "slow"."""

    def __init__(self) -> None:
        self.targets: list[LlmTarget] = []

    async def complete(
        self, target: LlmTarget, request: LlmRequest, on_token: TokenCallback | None = None
    ) -> LlmReply:
        self.targets.append(target)
        model = target.model
        if model.startswith("fail:"):
            raise LlmCallFailed(model.split(":", 1)[1], f"{model} broke")  # type: ignore[arg-type]
        if model in ("slow", "stream-then-fail"):
            assert on_token is not None
            await on_token("a")
            if model == "stream-then-fail":
                raise LlmCallFailed("network", "connection reset")
            await asyncio.sleep(10)
        if model == "flood":  # a runaway provider: endless 10k-character pieces
            assert on_token is not None
            self.flooded = 0
            for _ in range(500):
                await on_token("x" * 10_000)
                self.flooded += 1
            return LlmReply("x" * 5_000_000, model, target.provider_id, Usage(1, 3, 500, None))
        if model == "huge":
            return LlmReply("x" * 3_000_000, model, target.provider_id, Usage(1, 3, 750_000, 2.0))
        if on_token is not None:
            await on_token("hi")
        return LlmReply("hi", model, target.provider_id, Usage(1, 3, 1, 0.5))


def _provider(name: str, model: str = "ok", **kw: Any) -> LlmProvider:
    now = datetime.now(UTC)
    return LlmProvider(
        str(uuid.uuid4()),
        name,
        "openai",
        model,
        kw.pop("base_url", None),
        None,
        1,
        now,
        now,
        **kw,
    )


def _service(
    *providers: LlmProvider, local: str | None = "http://me/local-llm/v1"
) -> tuple[LlmService, ScriptedClient, FakeUsage]:
    repo = FakeProviders(list(providers))
    client = ScriptedClient()
    usage = FakeUsage()
    service = LlmService(lambda _schema: FakeUow(repo), FakeBox(), client, usage, lambda: local)  # type: ignore[arg-type]
    return service, client, usage


SCOPE = CallScope("t1", TENANT, execution_id=str(uuid.uuid4()), node_id="ask")
REQUEST = LlmRequest(messages=[{"role": "user", "content": "hello"}])


async def test_failover_goes_down_the_fallbacks_in_order_and_reports_each_switch() -> None:
    c = _provider("C")
    b = _provider("B", "fail:rate_limited")
    a = _provider("A", "fail:server", fallback_ids=[b.id, c.id])
    service, client, usage = _service(a, b, c)
    events: list[tuple[str, dict[str, Any]]] = []

    async def on_event(message: str, data: dict[str, Any]) -> None:
        events.append((message, data))

    reply = await service.complete(SCOPE, a.id, REQUEST, on_event=on_event)
    assert reply.provider_id == c.id
    assert [t.name for t in client.targets] == ["A", "B", "C"]
    assert [(d["fromProvider"]["name"], d["toProvider"]["name"]) for _, d in events] == [
        ("A", "B"),
        ("B", "C"),
    ]
    assert "'A'" in events[0][0] and "'B'" in events[0][0]
    assert [r.provider_id for r in usage.records] == [a.id, b.id, c.id]
    assert all(r.execution_id == SCOPE.execution_id and r.node_id == "ask" for r in usage.records)
    assert usage.records[-1].usage == Usage(1, 3, 1, 0.5)


async def test_no_failover_on_auth_or_after_tokens_were_streamed() -> None:
    b = _provider("B")
    auth = _provider("Auth", "fail:auth", fallback_ids=[b.id])
    streamed = _provider("Streamed", "stream-then-fail", fallback_ids=[b.id])
    service, client, usage = _service(auth, streamed, b)
    with pytest.raises(LlmCallFailed) as failed:
        await service.complete(SCOPE, auth.id, REQUEST)
    assert failed.value.kind == "auth" and "'Auth'" in str(failed.value)

    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    with pytest.raises(LlmCallFailed):
        await service.complete(SCOPE, streamed.id, REQUEST, on_token=on_token)
    assert tokens == ["a"]
    assert [t.name for t in client.targets] == ["Auth", "Streamed"]
    assert usage.records[-1].usage == Usage(1, 0, 1, None)  # the streamed token counts


async def test_every_provider_failing_names_them_all() -> None:
    b = _provider("B", "fail:timeout")
    a = _provider("A", "fail:network", fallback_ids=[b.id])
    service, _, usage = _service(a, b)
    with pytest.raises(LlmCallFailed) as failed:
        await service.complete(SCOPE, a.id, REQUEST)
    assert failed.value.kind == "timeout"
    assert "'A'" in str(failed.value) and "'B'" in str(failed.value)
    assert len(usage.records) == 2


async def test_a_cancelled_call_still_records_its_usage_once() -> None:
    slow = _provider("Slow", "slow")
    service, _, usage = _service(slow)
    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    task = asyncio.create_task(service.complete(SCOPE, slow.id, REQUEST, on_token=on_token))
    while not tokens:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert [r.usage for r in usage.records] == [Usage(1, 0, 1, None)]


async def test_keys_are_decrypted_per_call_and_the_local_provider_resolves_late() -> None:
    box = FakeBox()
    keyed = _provider("Keyed")
    keyed.api_key = box.seal("sk-secret", f"llm_provider:t1:{keyed.id}")
    local = _provider("Local", base_url=LOCAL_BASE_URL)
    service, client, _ = _service(keyed, local)
    await service.complete(SCOPE, keyed.id, REQUEST)
    await service.complete(SCOPE, local.id, REQUEST)
    assert client.targets[0].api_key == "sk-secret"
    assert "sk-secret" not in repr(client.targets[0])
    assert client.targets[1].base_url == "http://me/local-llm/v1"

    disabled, _, _ = _service(local, local=None)
    with pytest.raises(LlmCallFailed, match="not enabled"):
        await disabled.complete(SCOPE, local.id, REQUEST)


async def test_requests_are_tagged_with_the_run_and_node() -> None:
    seen: list[LlmRequest] = []
    a = _provider("A")
    service, client, _ = _service(a)
    original = client.complete

    async def spy(
        target: LlmTarget, request: LlmRequest, on_token: TokenCallback | None = None
    ) -> LlmReply:
        seen.append(request)
        return await original(target, request, on_token)

    client.complete = spy  # type: ignore[method-assign]
    await service.complete(SCOPE, a.id, REQUEST)
    assert (seen[0].run_tag, seen[0].node_tag) == (SCOPE.execution_id, "ask")


async def test_unknown_provider_is_not_found() -> None:
    service, _, _ = _service()
    with pytest.raises(NotFound):
        await service.complete(SCOPE, str(uuid.uuid4()), REQUEST)
    with pytest.raises(NotFound):
        await service.complete(SCOPE, "not-a-uuid", REQUEST)


async def test_test_provider_reports_instead_of_raising_and_needs_the_admin_role() -> None:
    good = _provider("Good")
    bad = _provider("Bad", "fail:auth")
    service, client, usage = _service(good, bad)
    admin = Principal("t1", TENANT, Role.ADMIN)
    ok = await service.test_provider(admin, good.id)
    assert ok["ok"] is True and ok["error"] is None and ok["model"] == "ok"
    failed = await service.test_provider(admin, bad.id)
    assert failed == {
        "ok": False,
        "latencyMs": failed["latencyMs"],
        "model": "fail:auth",
        "error": "auth: fail:auth broke",
    }
    assert client.targets[0].max_retries == 0  # a test is one request
    assert len(usage.records) == 2 and usage.records[0].execution_id is None
    with pytest.raises(Forbidden):
        await service.test_provider(Principal("t1", TENANT, Role.MEMBER), good.id)


class FakeReader:
    async def by_nodes(
        self, tenant_schema: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Usage]:
        return {}

    async def by_executions(self, tenant_schema: str, ids: Sequence[str]) -> dict[str, Usage]:
        return {ids[0]: Usage(2, 10, 5, None)} if ids else {}

    async def by_days(self, tenant_schema: str, since: date) -> list[UsageDay]:
        return [UsageDay(date(2025, 1, 9), 3, Usage(1, 1, 1, 0.25))]


async def test_daily_usage_lists_every_day_newest_first() -> None:
    service = UsageService(FakeReader())
    viewer = Principal("t1", TENANT, Role.VIEWER)
    days = await service.daily(viewer, 3, today=date(2025, 1, 10))
    assert [d.day for d in days] == [date(2025, 1, 10), date(2025, 1, 9), date(2025, 1, 8)]
    assert days[0].usage == Usage() and days[1].executions == 3
    with pytest.raises(BadUserInput):
        await service.daily(viewer, 0)
    found = await service.for_executions(viewer, ["e1", "e2"])
    assert found == {"e1": Usage(2, 10, 5, None), "e2": Usage()}


def test_usage_sums_keep_cost_unknown_when_any_part_is_unknown() -> None:
    priced = Usage(1, 10, 5, 0.25)
    assert (priced + priced).cost_usd == 0.5
    assert (priced + Usage(1, 1, 1, None)).cost_usd is None
    assert (Usage() + priced) == priced


async def test_a_runaway_reply_is_cut_off_failed_and_still_recorded() -> None:
    flood, huge = _provider("Flood", "flood"), _provider("Huge", "huge")
    service, client, usage = _service(flood, huge)
    streamed: list[str] = []

    async def on_token(text: str) -> None:
        streamed.append(text)

    with pytest.raises(LlmCallFailed, match="longer than") as failed:
        await service.complete(SCOPE, flood.id, REQUEST, on_token=on_token)
    assert failed.value.kind == "bad_request"  # not retried, no failover
    assert sum(map(len, streamed)) <= MAX_REPLY_CHARS and client.flooded == len(streamed)
    with pytest.raises(LlmCallFailed, match="longer than"):
        await service.complete(SCOPE, huge.id, REQUEST)
    assert [r.usage for r in usage.records] == [
        Usage(1, 0, len(streamed), None),
        Usage(1, 3, 750_000, 2.0),  # the provider's own count, although the reply was refused
    ]

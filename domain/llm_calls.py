"""LLM calls on behalf of a tenant: provider resolution, failover, usage, provider tests.

Every LLM request of the service (LLM nodes, CrewAI agents through their `BaseLLM`,
`testLlmProvider`) goes through `LlmService`, so failover, usage recording and key
handling apply everywhere. Keys are decrypted per call into an `LlmTarget` and dropped
with it; messages are the provider's, scrubbed of the key by the adapter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from domain.errors import NotFound
from domain.identity import Principal
from domain.llm import (
    LlmCallFailed,
    LlmClient,
    LlmReply,
    LlmRequest,
    LlmTarget,
    TokenCallback,
    Usage,
    UsageRecord,
    UsageStore,
)
from domain.observability import NULL_OBSERVER, LlmCallObserved, Observer
from domain.ports import TenantUnitOfWorkFactory
from domain.providers import LlmProvider, reveal
from domain.quotas import TenantQuotas
from domain.rbac import Action
from domain.resources import require_id
from domain.secrets import SecretBox

log = logging.getLogger("crewgraph.llm")

# (message, data) -> a LOG event of the node (failover switches and the like).
EventCallback = Callable[[str, dict[str, Any]], Awaitable[None]]

TEST_TIMEOUT_SECONDS = 30.0
# A reply longer than this is cut off and the call fails: every piece of a streamed reply
# becomes a stored event and the reply a node output, so a runaway or hostile provider
# must not fill the database. Generous: about 250k tokens of English.
MAX_REPLY_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class CallScope:
    """Whose call this is and what it is recorded against."""

    tenant_id: str
    tenant_schema: str
    execution_id: str | None = None
    node_id: str | None = None
    chat_session_id: str | None = None


class LlmService:
    """One LLM call with failover over the provider's fallbacks, recorded once per request."""

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        box: SecretBox,
        client: LlmClient,
        usage: UsageStore,
        local_base_url: Callable[[], str | None],
        *,
        observer: Observer = NULL_OBSERVER,
        quotas: TenantQuotas | None = None,
    ) -> None:
        self._uow = uow
        self._quotas = quotas  # the daily token quota; None: not enforced
        self._box = box
        self._client = client
        self._usage = usage
        self._local_base_url = local_base_url
        self._observer = observer  # spans and measurements of each provider call
        # Usage writes still running after their caller was cancelled: referenced until
        # done, so they are neither collected half-way nor silently lost.
        self._writes: set[asyncio.Task[None]] = set()

    async def complete(
        self,
        scope: CallScope,
        provider_id: str,
        request: LlmRequest,
        *,
        on_token: TokenCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> LlmReply:
        """The reply of the provider, or of its first fallback that answers.

        Falls over on timeouts, rate limits, 5xx and unreachable hosts, but never after
        tokens of a reply were already streamed (they cannot be taken back). Raises
        `LlmCallFailed` (the last provider's failure; earlier ones are in the message) or
        `NotFound` when the provider does not exist in the tenant, `LimitExceeded` when
        the tenant's tokens of the day reached its quota (checked before the call only:
        the call that crosses the quota completes, the next one is refused)."""
        if self._quotas is not None:
            await self._quotas.check_tokens(scope.tenant_id, scope.tenant_schema)
        chain = await self._chain(scope.tenant_schema, provider_id)
        request = dataclasses.replace(
            request,
            run_tag=request.run_tag or scope.execution_id or scope.chat_session_id,
            node_tag=request.node_tag or scope.node_id,
        )
        failures: list[str] = []
        for index, provider in enumerate(chain):
            tokens = _TokenCount(on_token)
            try:
                return await self._call(scope, provider, request, tokens)
            except LlmCallFailed as failed:
                failures.append(f"{provider.name!r}: {failed}")
                nxt = chain[index + 1] if index + 1 < len(chain) else None
                if nxt is None or not failed.fails_over or tokens.count:
                    raise _final(provider, failed, failures) from None
                if on_event is not None:
                    await on_event(
                        f"LLM provider {provider.name!r} failed ({failed.kind}); "
                        f"falling over to {nxt.name!r}",
                        {
                            "fromProvider": {"id": provider.id, "name": provider.name},
                            "toProvider": {"id": nxt.id, "name": nxt.name},
                            "reason": failed.kind,
                            "error": str(failed),
                        },
                    )
        raise AssertionError("unreachable: the chain is never empty")

    async def test_provider(self, p: Principal, provider_id: str) -> dict[str, Any]:
        """A real one-token call to the provider alone (no fallbacks):
        `{ok, latencyMs, model, error}`. Failures are reported, never raised."""
        p.require(Action.MANAGE_PROVIDERS)
        async with self._uow(p.tenant_schema) as uow:
            provider = await uow.providers.get(require_id("LLM provider", provider_id))
        if provider is None:
            raise NotFound("LLM provider", provider_id)
        scope = CallScope(p.tenant_id, p.tenant_schema)
        request = LlmRequest(messages=[{"role": "user", "content": "Say OK."}], max_tokens=1)
        started = time.perf_counter()
        try:
            reply = await self._call(
                scope, provider, request, _TokenCount(None), timeout=TEST_TIMEOUT_SECONDS
            )
        except LlmCallFailed as failed:
            return {
                "ok": False,
                "latencyMs": _ms(started),
                "model": provider.model,
                "error": f"{failed.kind}: {failed}",
            }
        return {"ok": True, "latencyMs": _ms(started), "model": reply.model, "error": None}

    async def _chain(self, tenant_schema: str, provider_id: str) -> list[LlmProvider]:
        async with self._uow(tenant_schema) as uow:
            provider = await uow.providers.get(require_id("LLM provider", provider_id))
            if provider is None:
                raise NotFound("LLM provider", provider_id)
            found = await uow.providers.get_many(provider.fallback_ids)
        # A fallback deleted meanwhile is skipped (the foreign key normally prevents it).
        return [provider, *(found[i] for i in provider.fallback_ids if i in found)]

    def _target(self, scope: CallScope, provider: LlmProvider, timeout: float | None) -> LlmTarget:
        base_url = provider.base_url
        if provider.is_local:
            base_url = self._local_base_url()
            if base_url is None:
                raise LlmCallFailed(
                    "bad_request",
                    "the local scripted model is not enabled on this server (CREWGRAPH_LOCAL_LLM)",
                )
        return LlmTarget(
            provider_id=provider.id,
            name=provider.name,
            provider=provider.provider,
            model=provider.model,
            base_url=base_url,
            api_key=reveal(self._box, scope.tenant_id, provider),
            timeout_seconds=min(timeout or provider.timeout_seconds, provider.timeout_seconds),
            max_retries=0 if timeout else provider.max_retries,
        )

    async def _call(
        self,
        scope: CallScope,
        provider: LlmProvider,
        request: LlmRequest,
        tokens: _TokenCount,
        *,
        timeout: float | None = None,
    ) -> LlmReply:
        usage: Usage | None = None
        model = provider.model
        outcome, started = "error", time.perf_counter()
        span = self._observer.span(
            "llm.call",
            {
                "crewgraph.tenant_id": scope.tenant_id,
                "crewgraph.execution_id": scope.execution_id,
                "crewgraph.node_id": scope.node_id,
                "crewgraph.chat_session_id": scope.chat_session_id,
                "crewgraph.llm.provider_id": provider.id,
                "gen_ai.system": provider.provider,
                "gen_ai.request.model": provider.model,
            },
        )
        with span:
            try:
                reply = await self._client.complete(
                    self._target(scope, provider, timeout), request, tokens.callback
                )
                usage, model = reply.usage, reply.model
                if len(reply.content) > MAX_REPLY_CHARS:
                    raise _too_long(reply.usage)
                outcome = "ok"
                return reply
            except LlmCallFailed as failed:
                usage, outcome = failed.usage, failed.kind
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                # Once per request, also when it failed or the run was cancelled: what was
                # streamed before a cancel is still counted (its price is unknown then).
                if usage is None:
                    usage = Usage(1, 0, tokens.count, None)
                self._observer.llm_call(
                    LlmCallObserved(
                        scope.tenant_id,
                        provider.provider,
                        model,
                        outcome,
                        usage,
                        time.perf_counter() - started,
                    )
                )
                record = UsageRecord(
                    provider.id,
                    model,
                    usage,
                    scope.execution_id,
                    scope.node_id,
                    scope.chat_session_id,
                )
                await self._record(scope.tenant_schema, record)

    async def _record(self, tenant_schema: str, record: UsageRecord) -> None:
        # Shielded: a cancel arriving now must not lose the row; a failed write must not
        # replace the call's own outcome (a cancel or the provider's error).
        write = asyncio.ensure_future(self._usage.record(tenant_schema, record))
        self._writes.add(write)
        write.add_done_callback(self._written)
        try:
            await asyncio.shield(write)
        except Exception:
            pass  # logged by _written; the call's own outcome stands

    def _written(self, write: asyncio.Task[None]) -> None:
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is not None:
            log.error("could not record LLM usage", exc_info=write.exception())


class _TokenCount:
    """Passes streamed tokens on and counts them (no failover once output went out);
    stops a reply that grows past `MAX_REPLY_CHARS` (raising closes the stream)."""

    def __init__(self, on_token: TokenCallback | None) -> None:
        self.count = 0
        self._chars = 0
        self._on_token = on_token
        self.callback: TokenCallback | None = self._forward if on_token else None

    async def _forward(self, text: str) -> None:
        self._chars += len(text)
        if self._chars > MAX_REPLY_CHARS:
            raise _too_long()
        self.count += 1
        assert self._on_token is not None
        await self._on_token(text)


def _too_long(usage: Usage | None = None) -> LlmCallFailed:
    return LlmCallFailed(
        "bad_request",
        f"the reply is longer than {MAX_REPLY_CHARS} characters; it was cut off",
        usage=usage,
    )


def _final(provider: LlmProvider, failed: LlmCallFailed, failures: list[str]) -> LlmCallFailed:
    if len(failures) == 1:
        message = f"LLM provider {provider.name!r} failed ({failed.kind}): {failed}"
    else:
        message = "every LLM provider failed: " + "; ".join(failures)
    return LlmCallFailed(failed.kind, message, usage=failed.usage)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)

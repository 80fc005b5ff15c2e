"""Generating a reply, on a worker: history → model or agent → tokens → stored message.

One reply, `ChatReplier.run(ref)`:

1. claims the reply in PostgreSQL (the session's lock names it and nobody holds it);
   a reply cancelled, expired or already claimed elsewhere is left alone; one whose
   tenant is suspended (the claim reads public.tenants under the session's lock) ends
   CANCELLED "tenant suspended" at once, as an execution's claim ends it: a reply
   accepted just before the suspension committed never generates;
2. reads the history from the message store (the newest messages that fit the model's
   context window with the system prompt, which is always kept);
3. asks the session's LLM provider through `LlmService` (failover, usage recorded
   against the session and the tenant's day) or runs the session's agent with CrewAI
   (its tools run in the sandbox, its model calls through the same gateway);
4. publishes each token (buffered per reply, then published on the session's channel),
   while renewing the claim every third of the lease; the renewal also reads the cancel
   flag and the tenant's status, a fallback for the Redis cancel signal;
5. stores the final message once (COMPLETED with usage, FAILED with the error, CANCELLED
   with what was generated), releases the lock, then publishes the `done` token.

A worker that dies stops renewing: once the claim expires the reply is failed by whoever
touches the session next (a send, a cancel, a history read), from the tokens buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from domain.chat.model import (
    ChatLimits,
    ChatMessage,
    ChatRole,
    ChatSession,
    ChatToken,
    HistoryMessage,
    MessageStatus,
    ReplyRef,
    agent_task,
    fit_history,
    split_reply,
    to_llm_messages,
    utcnow,
)
from domain.chat.ports import ChatMessageStore, ChatSessionStore, ChatTokenBus, ContextWindows
from domain.chat.service import Finisher
from domain.crew_runs import (
    AgentToolCalls,
    CrewRun,
    CrewRuntime,
    CrewSpec,
    TaskSpec,
    load_agent_specs,
)
from domain.errors import DomainError
from domain.executions.claims import TENANT_SUSPENDED_ERROR
from domain.executions.streams import FeedInterrupted
from domain.llm import LlmCallFailed, LlmReply, LlmRequest, TokenCallback, Usage
from domain.llm_calls import CallScope, LlmService
from domain.ports import TenantUnitOfWorkFactory
from domain.tasks import cancel_and_wait
from domain.tool_runs import ToolRunner

log = logging.getLogger("crewgraph.chat")

AGENT_EXPECTED_OUTPUT = "A direct reply to the user's message."
FINISH_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(slots=True)
class _Reply:
    ref: ReplyRef
    parts: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    # "cancel" (the user's, or a suspension's signal) | "suspended" (seen by the renewal)
    # | "lost" (someone else ended it)
    stop: str | None = None

    @property
    def content(self) -> str:
        return "".join(self.parts)


class _Stopped(Exception):
    pass


class ChatReplier:
    """Runs replies; `cancel_local` stops one running in this process."""

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        sessions: ChatSessionStore,
        messages: ChatMessageStore,
        bus: ChatTokenBus,
        llm: LlmService,
        limits: ChatLimits,
        *,
        owner: str,
        windows: ContextWindows | None = None,
        crew_runtime: CrewRuntime | None = None,
        tools: ToolRunner | None = None,
    ) -> None:
        self._uow = uow
        self._sessions = sessions
        self._messages = messages
        self._bus = bus
        self._llm = llm
        self.limits = limits
        self.owner = owner
        self._windows = windows
        self._crew_runtime = crew_runtime
        self._tools = tools
        self._finisher = Finisher(sessions, messages, bus)
        self._running: dict[str, tuple[asyncio.Task[Any], _Reply]] = {}

    @property
    def running(self) -> int:
        return len(self._running)

    def cancel_local(self, message_id: str) -> bool:
        found = self._running.get(message_id)
        if found is None:
            return False
        task, state = found
        state.stop = state.stop or "cancel"
        task.cancel()
        return True

    async def run(self, ref: ReplyRef) -> None:
        lease = self.limits.reply_lease_seconds

        def claim(s: ChatSession) -> ChatSession | None:
            if s.reply_id != ref.message_id or s.reply_owner is not None:
                return None
            s.reply_owner = self.owner
            s.reply_expires_at = utcnow() + timedelta(seconds=lease)
            return dataclasses.replace(s)

        session = await self._sessions.change(ref.tenant_schema, ref.session_id, claim)
        if session is None:
            return  # ended, cancelled before it started, or another worker has it
        state = _Reply(ref)
        if session.tenant_suspended:
            await self._end(state, MessageStatus.CANCELLED, TENANT_SUSPENDED_ERROR)
            return
        if session.cancel_requested:
            await self._end(state, MessageStatus.CANCELLED, None)
            return
        generation = asyncio.create_task(self._generate(session, state))
        self._running[ref.message_id] = (generation, state)
        keeper = asyncio.create_task(self._keep(ref, state))
        status, error = MessageStatus.COMPLETED, None
        try:
            await generation
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if state.stop is None or (current is not None and current.cancelling()):
                raise  # the process is stopping: the claim expires, another ends it
            status, error = MessageStatus.CANCELLED, await self._cancel_reason(state)
        except LlmCallFailed as exc:
            status, error = MessageStatus.FAILED, str(exc)
        except DomainError as exc:
            status, error = MessageStatus.FAILED, exc.message
        except Exception as exc:
            log.exception("a chat reply failed")
            status, error = MessageStatus.FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            self._running.pop(ref.message_id, None)
            await cancel_and_wait(keeper)
        if state.stop == "lost":
            return
        await self._end(state, status, error)

    # ---- generation

    async def _generate(self, session: ChatSession, state: _Reply) -> None:
        ref = state.ref
        # The claim was taken while this reply held the session's lock, so the session's
        # last sequence is the reply's: the history is everything before it.
        stored = await self._messages.before(
            ref.tenant_id, ref.session_id, session.last_seq, self.limits.history_max_messages
        )
        history = [h for h in (_history(m) for m in reversed(stored)) if h is not None]
        if not history or history[-1].role is not ChatRole.USER:
            raise DomainError("there is no user message to reply to")
        scope = CallScope(ref.tenant_id, ref.tenant_schema, chat_session_id=ref.session_id)

        async def on_token(text: str) -> None:
            await self._bus.push(
                ref.tenant_id, ChatToken(ref.session_id, ref.message_id, len(state.parts), text)
            )
            state.parts.append(text)

        async def complete(
            provider_id: str, request: LlmRequest, tokens: TokenCallback | None
        ) -> LlmReply:
            try:
                answer = await self._llm.complete(scope, provider_id, request, on_token=tokens)
            except LlmCallFailed as exc:
                state.usage = state.usage + (exc.usage or Usage(1))
                raise
            state.usage = state.usage + answer.usage
            state.model = answer.model
            return answer

        if session.llm_provider_id is not None:
            window = await self._window(ref.tenant_schema, session.llm_provider_id)
            kept = fit_history(session.system_prompt, history, window)
            request = LlmRequest(messages=to_llm_messages(session.system_prompt, kept))
            await complete(session.llm_provider_id, request, on_token)
        elif session.agent_id is not None:
            text = await self._agent_reply(ref, session, history, complete)
            for piece in split_reply(text):
                await on_token(piece)
        else:
            raise DomainError("this chat session's model or agent was deleted; start a new session")

    async def _agent_reply(
        self,
        ref: ReplyRef,
        session: ChatSession,
        history: list[HistoryMessage],
        complete: Callable[[str, LlmRequest, TokenCallback | None], Awaitable[LlmReply]],
    ) -> str:
        if self._crew_runtime is None or self._tools is None:
            raise DomainError("agents are not available on this worker")
        assert session.agent_id is not None
        ref_schema = ref.tenant_schema
        specs = await load_agent_specs(
            self._uow, ref_schema, [session.agent_id], owner=f"chat session {session.id}"
        )
        agent = specs[session.agent_id]
        window = await self._window(ref_schema, agent.provider_id)
        kept = fit_history(session.system_prompt, history, window)
        spec = CrewSpec(
            name=f"chat with {agent.name}",
            process="sequential",
            agents=(agent,),
            tasks=(
                TaskSpec(agent_task(session.system_prompt, kept), AGENT_EXPECTED_OUTPUT, agent.id),
            ),
        )
        calls = AgentToolCalls(self._tools)

        async def quiet(*_: Any) -> None:
            return None  # the agent's steps are not part of the reply

        run = CrewRun(
            tenant_id=ref.tenant_id,
            tenant_schema=ref_schema,
            execution_id=session.id,  # the session's workspace: files outlive one reply
            node_id="chat",
            complete=lambda pid, req, tok: _coro(complete(pid, req, tok)),
            run_tool=lambda tool, data: calls(run, tool, data),
            emit_token=quiet,
            log=quiet,
        )
        return await self._crew_runtime.run(spec, run)

    async def _window(self, tenant_schema: str, provider_id: str) -> int:
        default = self.limits.default_context_tokens
        if self._windows is None:
            return default
        async with self._uow(tenant_schema) as uow:
            provider = await uow.providers.get(provider_id)
        if provider is None:
            return default
        try:
            return self._windows(provider.provider, provider.model) or default
        except Exception:
            return default

    async def _cancel_reason(self, state: _Reply) -> str | None:
        """The error of a cancelled reply: "tenant suspended" when the suspension stopped
        it (its signal looks like the user's cancel), else none."""
        if state.stop == "suspended":
            return TENANT_SUSPENDED_ERROR
        ref = state.ref
        try:
            suspended = await self._sessions.change(
                ref.tenant_schema, ref.session_id, lambda s: s.tenant_suspended
            )
        except Exception:
            log.warning("reading a chat reply's tenant status failed", exc_info=True)
            return None
        return TENANT_SUSPENDED_ERROR if suspended else None

    # ---- the claim

    async def _keep(self, ref: ReplyRef, state: _Reply) -> None:
        lease = self.limits.reply_lease_seconds

        def renew(s: ChatSession) -> str:
            if s.reply_id != ref.message_id or s.reply_owner != self.owner:
                return "lost"
            s.reply_expires_at = utcnow() + timedelta(seconds=lease)
            if s.tenant_suspended:
                return "suspended"
            return "cancel" if s.cancel_requested else "ok"

        while True:
            await asyncio.sleep(lease / 3)
            try:
                outcome = await self._sessions.change(ref.tenant_schema, ref.session_id, renew)
            except Exception:
                log.warning("renewing a chat reply failed", exc_info=True)
                continue
            if outcome == "ok":
                continue
            if outcome == "suspended":
                state.stop = "suspended"
            self.cancel_local(ref.message_id)
            if outcome not in ("cancel", "suspended"):
                state.stop = "lost"  # someone else ended it, or the session is gone
            return

    # ---- the end

    async def _end(self, state: _Reply, status: MessageStatus, error: str | None) -> None:
        usage = state.usage if state.usage.llm_calls else None
        for delay in (*FINISH_RETRY_DELAYS, None):
            try:
                await self._finisher.finish(
                    state.ref,
                    status,
                    state.content,
                    len(state.parts),
                    error=error,
                    model=state.model,
                    usage=usage,
                )
                return
            except Exception:
                if delay is None:
                    log.exception("storing a chat reply failed; it expires as interrupted")
                    return
                log.warning("storing a chat reply failed; retrying", exc_info=True)
                await asyncio.sleep(delay)


def _history(m: ChatMessage) -> HistoryMessage | None:
    if m.role is ChatRole.USER:
        return HistoryMessage(m.role, m.content)
    if (
        m.role is ChatRole.ASSISTANT
        and m.content
        and m.status
        in (
            MessageStatus.COMPLETED,
            MessageStatus.CANCELLED,
        )
    ):
        return HistoryMessage(m.role, m.content)
    return None


async def _coro(awaitable: Awaitable[LlmReply]) -> LlmReply:
    return await awaitable


class ChatRunner:
    """Runs the replies dispatched to this process and the cancel listener."""

    def __init__(self, replier: ChatReplier, bus: ChatTokenBus) -> None:
        self.replier = replier
        self._bus = bus
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    async def dispatch(self, ref: ReplyRef) -> None:
        self.submit(ref)

    def submit(self, ref: ReplyRef) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(ref), name=f"chat-reply-{ref.message_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, ref: ReplyRef) -> None:
        try:
            await self.replier.run(ref)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a chat reply could not run")

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="chat-cancel-listener")

    async def _listen(self) -> None:
        while True:
            try:
                async with self._bus.cancels() as subscription:
                    while True:
                        ref = await subscription.next(None)
                        if ref is not None:
                            self.replier.cancel_local(ref.message_id)
            except FeedInterrupted:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("chat cancel listener failed; retrying")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        await cancel_and_wait(listener)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

"""CrewAI's events → execution events, routed to their node run.

CrewAI has one process-global event bus. Concurrent runs share it, so exactly one handler
is registered (`install`, once, when CrewAI is loaded) and each event is routed through a
contextvar (`current_channel`) that the runtime sets in the thread running a crew. How the
bus invokes handlers (crewai/events/event_bus.py) makes that work:

- `LLMStreamChunkEvent` handlers are called synchronously in the emitting thread;
- every other sync handler is submitted to the bus's thread pool under
  `contextvars.copy_context()` taken in the emitting thread;
- CrewAI itself propagates contexts into the threads it starts (`copy_context().run`,
  `asyncio.to_thread`), so the contextvar set around `crew.kickoff()` is visible wherever
  an event of that run is emitted.

Pool handlers may run out of order, so each event keeps its `emission_sequence` (per run:
CrewAI restarts the counter at crew kickoff, in the run's own context) and the channel
delivers what it has gathered in that order. `scoped_handlers()` is never used: it would
detach every other run's handler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import logging
import threading
from typing import Any

from domain.crew_runs import CrewRun

log = logging.getLogger("crewgraph.runtime.crewai")

TEXT_LIMIT = 2000
TASK_LABEL_LIMIT = 200

current_channel: contextvars.ContextVar[RunChannel | None] = contextvars.ContextVar(
    "crewgraph_crew_run", default=None
)


class AgentRunCancelled(RuntimeError):
    """The node run was cancelled: no further model or tool call may start."""


class GatewayLlmError(RuntimeError):
    """A model call failed after the gateway's retries and fallbacks (provider's message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class RunChannel:
    """One AGENT / CREW node run as seen from CrewAI's threads.

    Thread-safe `token()` / `log()` queue events for the run's pump task on the event
    loop; `cancel()` refuses everything afterwards and cancels calls in flight."""

    def __init__(self, run: CrewRun, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.loop = loop
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._items: list[tuple[int, int, str, str, dict[str, Any]]] = []
        self._arrival = itertools.count()
        self._signalled = False
        self._wakeup = asyncio.Event()
        self._closing = False
        self._finished = False
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._pump: asyncio.Task[None] | None = None

    # -- from any thread ---------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check_open(self) -> None:
        if self._cancelled.is_set():
            raise AgentRunCancelled("the execution was cancelled")

    def token(self, seq: int | None, text: str) -> None:
        if text:
            self._put(seq, "token", text, {})

    def log(self, seq: int | None, message: str, level: str, data: dict[str, Any]) -> None:
        self._put(seq, "log", message, {**data, "_level": level})

    def track(self, future: concurrent.futures.Future[Any]) -> None:
        """A call in flight on the loop, cancelled with the run."""
        with self._lock:
            self._inflight.add(future)
        if self._cancelled.is_set():
            future.cancel()

    def untrack(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._inflight.discard(future)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            inflight, self._items = list(self._inflight), []
        for future in inflight:
            future.cancel()

    def _put(self, seq: int | None, kind: str, text: str, data: dict[str, Any]) -> None:
        if self._cancelled.is_set():
            return
        with self._lock:
            if self._finished:
                return
            self._items.append((seq or 0, next(self._arrival), kind, text, data))
            if self._signalled:
                return
            self._signalled = True
        try:
            self.loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop is closed: the process is going away
            pass

    # -- on the event loop ---------------------------------------------------------------

    def start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    async def aclose(self) -> None:
        """Deliver everything queued so far, then stop (before the node completes)."""
        self._closing = True
        self._wakeup.set()
        if self._pump is not None:
            await self._pump

    def abort(self) -> None:
        """Stop without delivering (the run was cancelled; its sinks are closed)."""
        self.cancel()
        if self._pump is not None:
            self._pump.cancel()

    async def _run_pump(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            with self._lock:
                batch, self._items = self._items, []
                self._signalled = False
            batch.sort(key=lambda item: (item[0], item[1]))
            for _, _, kind, text, data in batch:
                try:
                    if kind == "token":
                        await self.run.emit_token(text)
                    else:
                        level = data.pop("_level", "info")
                        await self.run.log(text, level, data)
                except asyncio.CancelledError:
                    raise
                except Exception:  # an event that cannot be stored must not fail the crew
                    log.exception("could not record a crew event")
            if self._closing:
                with self._lock:
                    if not self._items:
                        self._finished = True
                        return


# -- the one bus handler ------------------------------------------------------------------


def _clip(value: Any, limit: int = TEXT_LIMIT) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more chars)"


def _agent_role(event: Any) -> str | None:
    role = getattr(event, "agent_role", None)
    if role:
        return str(role)
    for attr in ("agent", "from_agent"):
        agent = getattr(event, attr, None)
        if agent is not None and getattr(agent, "role", None):
            return str(agent.role)
    task = getattr(event, "task", None) or getattr(event, "from_task", None)
    agent = getattr(task, "agent", None)
    return str(agent.role) if agent is not None and getattr(agent, "role", None) else None


def _task_label(event: Any) -> str | None:
    task = getattr(event, "task", None) or getattr(event, "from_task", None)
    label = getattr(task, "name", None) or getattr(task, "description", None)
    if not label:
        label = getattr(event, "task_name", None)
    return _clip(str(label), TASK_LABEL_LIMIT) if label else None


def _attribution(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"source": "crewai", "event": str(getattr(event, "type", ""))}
    role = _agent_role(event)
    if role:
        data["agent"] = role
    task = _task_label(event)
    if task:
        data["task"] = task
    return data


def _describe(event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """(message, level, extra data) of a LOG event, or None to skip the event."""
    kind = str(getattr(event, "type", ""))
    role = _agent_role(event) or "agent"
    if kind == "crew_kickoff_started":
        return f"crew {event.crew_name or ''} started".replace("  ", " "), "info", {}
    if kind == "crew_kickoff_completed":
        return "crew completed", "info", {"output": _clip(getattr(event.output, "raw", ""))}
    if kind == "crew_kickoff_failed":
        return f"crew failed: {_clip(event.error)}", "error", {}
    if kind == "task_started":
        return "task started", "info", {}
    if kind == "task_completed":
        return "task completed", "info", {"output": _clip(getattr(event.output, "raw", ""))}
    if kind == "task_failed":
        return f"task failed: {_clip(event.error)}", "error", {}
    if kind == "agent_execution_started":
        return f"{role} started working", "info", {}
    if kind == "agent_execution_completed":
        return f"{role} finished", "info", {"output": _clip(event.output)}
    if kind == "agent_execution_error":
        return f"{role} failed: {_clip(event.error)}", "error", {}
    if kind == "tool_usage_started":
        return (
            f"{role} calls tool {event.tool_name}",
            "info",
            {"tool": event.tool_name, "input": _clip(event.tool_args)},
        )
    if kind == "tool_usage_finished":
        return (
            f"tool {event.tool_name} answered",
            "info",
            {
                "tool": event.tool_name,
                "input": _clip(event.tool_args),
                "output": _clip(event.output),
                "fromCache": bool(event.from_cache),
            },
        )
    if kind == "tool_usage_error":
        return (
            f"tool {event.tool_name} failed: {_clip(event.error)}",
            "error",
            {"tool": event.tool_name, "input": _clip(event.tool_args)},
        )
    return None


def on_event(source: Any, event: Any) -> None:
    """The handler registered on CrewAI's bus: route the event to its run, if any."""
    channel = current_channel.get()
    if channel is None or channel.cancelled:
        return  # not one of ours (or a run already given up)
    seq = getattr(event, "emission_sequence", None)
    if getattr(event, "type", "") == "llm_stream_chunk":
        if getattr(event, "tool_call", None) is None:
            channel.token(seq, str(getattr(event, "chunk", "") or ""))
        return
    described = _describe(event)
    if described is not None:
        message, level, extra = described
        channel.log(seq, message, level, {**_attribution(event), **extra})


def refuse_cancelled_llm_call(context: Any) -> None:
    """CrewAI's global before-LLM-call hook: no model call for a cancelled run."""
    channel = current_channel.get()
    if channel is not None and channel.cancelled:
        from crewai.hooks import HookAborted

        raise HookAborted("the execution was cancelled", source="crewgraph")


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Register the handler and the hook (once per process; CrewAI must be loaded)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from crewai.events import (
            AgentExecutionCompletedEvent,
            AgentExecutionErrorEvent,
            AgentExecutionStartedEvent,
            CrewKickoffCompletedEvent,
            CrewKickoffFailedEvent,
            CrewKickoffStartedEvent,
            LLMStreamChunkEvent,
            TaskCompletedEvent,
            TaskFailedEvent,
            TaskStartedEvent,
            ToolUsageErrorEvent,
            ToolUsageFinishedEvent,
            ToolUsageStartedEvent,
            crewai_event_bus,
        )
        from crewai.hooks import register_before_llm_call_hook

        for event_type in (
            CrewKickoffStartedEvent,
            CrewKickoffCompletedEvent,
            CrewKickoffFailedEvent,
            TaskStartedEvent,
            TaskCompletedEvent,
            TaskFailedEvent,
            AgentExecutionStartedEvent,
            AgentExecutionCompletedEvent,
            AgentExecutionErrorEvent,
            ToolUsageStartedEvent,
            ToolUsageFinishedEvent,
            ToolUsageErrorEvent,
            LLMStreamChunkEvent,
        ):
            crewai_event_bus.register_handler(event_type, on_event)
        register_before_llm_call_hook(refuse_cancelled_llm_call)
        _installed = True

"""The `CrewRuntime` port over CrewAI: one daemon thread per node run.

CrewAI is synchronous and slow to import, so each run gets its own thread (the event loop
keeps serving the API); the thread sets the run's channel in its context, builds the
crew from the spec and kicks it off. Cancelling the awaiting task cancels the run at once:
the channel refuses every further model and tool call (our `BaseLLM`, our tools and
CrewAI's global before-LLM-call hook all check it), calls in flight are cancelled (which
closes the provider's stream), and whatever the thread returns later is discarded. The
thread is a daemon, so a crew still unwinding never holds up process exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import shutil
import threading
from pathlib import Path

from domain.crew_runs import CrewRun, CrewRunFailed, CrewSpec
from domain.errors import DomainError
from runtime import crewai_env, crewai_events
from runtime.crewai_events import AgentRunCancelled, GatewayLlmError, RunChannel

log = logging.getLogger("crewgraph.runtime.crewai")

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
FLUSH_SECONDS = 10.0


class CrewAiRuntime:
    """Runs crews with CrewAI; `storage_dir` holds CrewAI's own files, `workspace_root`
    the per-execution workspaces (`<root>/<tenant>/<execution>`, the same directories the
    file builtins of TOOL nodes use)."""

    def __init__(self, storage_dir: Path, workspace_root: Path) -> None:
        crewai_env.configure(storage_dir)
        crewai_env.on_load(crewai_events.install)
        self._workspace_root = workspace_root

    def workspace(self, tenant_id: str, execution_id: str) -> Path:
        for part in (tenant_id, execution_id):
            if not _SAFE_SEGMENT.match(part):
                raise ValueError("invalid workspace id")
        return self._workspace_root.resolve() / tenant_id / execution_id

    async def remove_workspace(self, tenant_id: str, execution_id: str) -> None:
        """Delete an execution's workspace (call when the execution reaches its end)."""
        path = self.workspace(tenant_id, execution_id)
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    async def run(self, spec: CrewSpec, run: CrewRun) -> str:
        loop = asyncio.get_running_loop()
        channel = RunChannel(run, loop)
        workspace = self.workspace(run.tenant_id, run.execution_id)
        done: asyncio.Future[str] = loop.create_future()

        def settle(result: str | None, error: BaseException | None) -> None:
            if done.done():
                return  # cancelled meanwhile: the late result is discarded
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result or "")

        def work() -> None:
            result: str | None = None
            error: BaseException | None = None
            try:
                result = _kickoff(spec, channel, workspace)
            except BaseException as exc:  # handed to the awaiting task
                error = exc
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:
                pass  # the loop is gone (shutdown): nobody is waiting

        channel.start()
        thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(work,),
            name=f"crew-{run.execution_id[:8]}-{run.node_id}"[:60],
            daemon=True,
        )
        thread.start()
        try:
            output = await done
        except asyncio.CancelledError:
            channel.abort()
            raise
        except BaseException as exc:
            await channel.aclose()
            failure = _failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        await channel.aclose()
        return output


def _kickoff(spec: CrewSpec, channel: RunChannel, workspace: Path) -> str:
    crewai_env.load()
    from crewai.events import crewai_event_bus

    from runtime.crew_factory import build_crew

    crewai_events.current_channel.set(channel)
    channel.check_open()
    workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    crew = build_crew(spec, workspace)
    try:
        output = crew.kickoff(inputs=dict(spec.inputs) if spec.inputs else None)
    finally:
        # Handlers run on the bus's pool: wait for this run's events before returning.
        crewai_event_bus.flush(timeout=FLUSH_SECONDS)
    raw = getattr(output, "raw", None)  # a CrewOutput (crews are not kicked off streaming)
    return str(raw or "")


def _failure(exc: BaseException) -> BaseException:
    """What the node reports: domain errors as they are, CrewAI's errors as CREW_FAILED."""
    if isinstance(exc, DomainError | AgentRunCancelled):
        return exc
    if isinstance(exc, GatewayLlmError):
        return CrewRunFailed(f"model call failed: {exc}")
    text = str(exc) or type(exc).__name__
    return CrewRunFailed(f"{type(exc).__name__}: {text}" if isinstance(exc, Exception) else text)

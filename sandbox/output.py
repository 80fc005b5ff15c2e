"""Host-side handling of what a sandboxed process writes, and the result it maps to.

Both backends feed the process's stdout/stderr through :class:`OutputCollector` (which
enforces ``limits.output_bytes``: the first byte past it makes the caller kill the run)
and build the :class:`SandboxResult` with :func:`build_result`, so the semantics are the
same whatever the backend.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from domain.sandbox import JSONValue, SandboxRequest, SandboxResult, SandboxUsage

STDOUT = 1
STDERR = 2

#: Framing allowance beyond the output limit: one runner frame (8192 characters of print
#: output, JSON-escaped) or the result line's envelope.
_FRAME_SLACK = 64 * 1024
#: the result line's envelope (ok, error text, usage) beyond the output limit
_RESULT_ENVELOPE = 4096


@cache
def runner_source() -> str:
    """Source of ``sandbox/runner.py``, passed to ``python3 -I -B -c`` in the sandbox."""
    return Path(__file__).with_name("runner.py").read_text(encoding="utf-8")


def python_argv(python: str = "python3") -> list[str]:
    return [python, "-I", "-B", "-c", runner_source()]


def request_line(request: SandboxRequest) -> bytes:
    """The stdin payload: one JSON line for the runner, or the input for a command."""
    if request.kind == "python":
        payload: dict[str, Any] = {
            "code": request.code,
            "entrypoint": request.entrypoint,
            "input": dict(request.input),
            "scratch": request.execution_id,
        }
    else:
        payload = dict(request.input)
    return (json.dumps(payload, separators=(",", ":")) + "\n").encode("utf-8")


class OutputCollector:
    """Collects stdout/stderr up to ``limit`` bytes in all.

    For python runs stdout is the runner's framed channel: print chunks count by their
    payload, the result line by its size. :meth:`feed` returns False once the limit is
    passed (the caller then kills the process); what was kept is reported, flagged
    ``truncated``.
    """

    def __init__(self, *, framed: bool, limit: int) -> None:
        self.framed = framed
        self.limit = limit
        self.truncated = False
        self.result: dict[str, Any] | None = None
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._pending = bytearray()
        self._result_bytes = 0

    @property
    def used(self) -> int:
        return len(self._stdout) + len(self._stderr) + self._result_bytes

    def _append(self, buf: bytearray, data: bytes) -> bool:
        room = self.limit - self.used
        if len(data) > room:
            buf += data[: max(room, 0)]
            self.truncated = True
            return False
        buf += data
        return True

    def feed(self, stream: int, data: bytes) -> bool:
        if self.truncated:
            return False
        if stream == STDERR:
            return self._append(self._stderr, data)
        if not self.framed:
            return self._append(self._stdout, data)
        self._pending += data
        while (newline := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:newline])
            del self._pending[: newline + 1]
            if not self._frame(line):
                return False
        if len(self._pending) > self.limit - self.used + _FRAME_SLACK:
            self.truncated = True
            self._pending.clear()
            return False
        return True

    def _frame(self, line: bytes) -> bool:
        try:
            frame = json.loads(line)
        except ValueError:
            frame = None
        if isinstance(frame, dict) and frame.get("stream") == "stdout":
            data = frame.get("data")
            return self._append(self._stdout, str(data).encode("utf-8"))
        if isinstance(frame, dict) and "ok" in frame:
            if len(line) > self.limit - self.used + _RESULT_ENVELOPE:
                self.truncated = True
                return False
            self._result_bytes = len(line)
            self.result = frame
            return True
        # not the runner's framing (something wrote to the channel directly): keep as text
        return self._append(self._stdout, line + b"\n")

    def finish(self) -> None:
        if self._pending and not self.truncated:
            self._append(self._stdout, bytes(self._pending))
        self._pending.clear()

    @property
    def stdout(self) -> str:
        return self._stdout.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")


def _signal_text(exit_code: int | None) -> str:
    if exit_code is None:
        return "no exit code"
    if exit_code > 128:
        return f"exit code {exit_code} (signal {exit_code - 128})"
    if exit_code < 0:
        return f"signal {-exit_code}"
    return f"exit code {exit_code}"


def _usage(frame: dict[str, Any] | None) -> SandboxUsage:
    raw = frame.get("usage") if frame else None
    if not isinstance(raw, dict):
        return SandboxUsage()
    mem = raw.get("max_memory_bytes")
    cpu = raw.get("cpu_seconds")
    return SandboxUsage(
        max_memory_bytes=int(mem) if isinstance(mem, int) else None,
        cpu_seconds=float(cpu) if isinstance(cpu, (int, float)) else None,
    )


def build_result(
    request: SandboxRequest,
    collected: OutputCollector,
    *,
    backend: str,
    exit_code: int | None,
    duration_ms: int,
    timed_out: bool = False,
    oom_killed: bool = False,
    error: str | None = None,
) -> SandboxResult:
    """Map what happened to a :class:`SandboxResult`. Host-observed facts (timeout,
    OOM, truncation) win over anything the sandboxed process reported."""
    collected.finish()
    limits = request.limits
    frame = collected.result
    output: JSONValue = None
    error_type: str | None = None
    ok = False
    if frame is not None and frame.get("error_type") == "MemoryError":
        oom_killed = True
    if timed_out:
        error, error_type = f"timed out after {limits.timeout_seconds:g}s", "Timeout"
    elif oom_killed:
        error, error_type = f"memory limit exceeded ({limits.memory_mb} MB)", "MemoryError"
    elif collected.truncated:
        error = f"output exceeded the {limits.output_bytes}-byte limit; the run was stopped"
        error_type = "OutputLimit"
    elif error is not None:
        error_type = "SandboxError"
    elif request.kind == "python":
        if frame is None:
            error = f"the sandboxed process ended ({_signal_text(exit_code)}) without a result"
            error_type = "Crashed"
        elif frame.get("ok") is True and exit_code == 0:
            ok, output = True, frame.get("output")
        else:
            error = str(frame.get("error") or f"the run failed ({_signal_text(exit_code)})")
            error_type = str(frame.get("error_type") or "Error")
    else:
        text = collected.stdout
        if text.strip():
            try:
                output = json.loads(text)
            except ValueError:
                output = None
        if exit_code == 0:
            ok = True
        else:
            error, error_type = f"command failed ({_signal_text(exit_code)})", "ExitCode"
    return SandboxResult(
        ok=ok,
        output=output if ok or request.kind == "command" else None,
        stdout=collected.stdout,
        stderr=collected.stderr,
        exit_code=exit_code,
        duration_ms=duration_ms,
        timed_out=timed_out,
        oom_killed=oom_killed,
        truncated=collected.truncated,
        error=error,
        error_type=error_type,
        usage=_usage(frame),
        backend=backend,
        execution_id=request.execution_id,
    )

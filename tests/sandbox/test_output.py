"""Host-side output handling shared by both backends (no backend needed)."""

from __future__ import annotations

import json

from domain.sandbox import SandboxLimits, SandboxRequest
from sandbox.output import STDERR, STDOUT, OutputCollector, build_result, request_line


def _frame(obj: object) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _py(**limits: object) -> SandboxRequest:
    return SandboxRequest(
        tenant_id="t1",
        code="def run(x): return x",
        limits=SandboxLimits(**limits),  # type: ignore[arg-type]
    )


def test_framed_channel_separates_prints_from_the_result() -> None:
    c = OutputCollector(framed=True, limit=10_000)
    data = _frame({"stream": "stdout", "data": "hello\n"}) + _frame(
        {"ok": True, "output": {"a": 1}, "error": None, "usage": {"max_memory_bytes": 42}}
    )
    # split at an awkward place: frames arrive in pieces
    assert c.feed(STDOUT, data[:7])
    assert c.feed(STDOUT, data[7:])
    assert c.feed(STDERR, b"warning\n")
    result = build_result(_py(), c, backend="x", exit_code=0, duration_ms=5)
    assert result.ok and result.output == {"a": 1}
    assert result.stdout == "hello\n" and result.stderr == "warning\n"
    assert result.usage.max_memory_bytes == 42


def test_limit_truncates_and_asks_for_a_kill() -> None:
    c = OutputCollector(framed=False, limit=2048)
    assert c.feed(STDOUT, b"a" * 2000)
    assert not c.feed(STDERR, b"b" * 100)
    assert c.truncated
    assert not c.feed(STDOUT, b"more")
    result = build_result(
        SandboxRequest(tenant_id="t1", kind="command", command=("x",)),
        c,
        backend="x",
        exit_code=137,
        duration_ms=1,
    )
    assert not result.ok and result.truncated and result.error_type == "OutputLimit"
    assert len(result.stdout) + len(result.stderr) == 2048


def test_host_facts_win_over_what_the_process_says() -> None:
    c = OutputCollector(framed=True, limit=10_000)
    c.feed(STDOUT, _frame({"ok": True, "output": 1, "error": None}))
    timed = build_result(
        _py(timeout_seconds=2), c, backend="x", exit_code=0, duration_ms=1, timed_out=True
    )
    assert not timed.ok and timed.timed_out and timed.output is None
    assert timed.error == "timed out after 2s"
    oom = build_result(_py(), c, backend="x", exit_code=137, duration_ms=1, oom_killed=True)
    assert not oom.ok and oom.oom_killed and oom.error_type == "MemoryError"


def test_missing_result_is_a_crash_and_memory_error_is_oom() -> None:
    c = OutputCollector(framed=True, limit=10_000)
    crashed = build_result(_py(), c, backend="x", exit_code=139, duration_ms=1)
    assert (
        not crashed.ok and crashed.error_type == "Crashed" and "signal 11" in (crashed.error or "")
    )
    c2 = OutputCollector(framed=True, limit=10_000)
    c2.feed(
        STDOUT,
        _frame(
            {"ok": False, "output": None, "error": "MemoryError: x", "error_type": "MemoryError"}
        ),
    )
    mem = build_result(_py(memory_mb=128), c2, backend="x", exit_code=1, duration_ms=1)
    assert mem.oom_killed and mem.error == "memory limit exceeded (128 MB)"


def test_command_output_is_parsed_when_it_is_json() -> None:
    req = SandboxRequest(tenant_id="t1", kind="command", command=("x",), input={"a": 1})
    assert request_line(req) == b'{"a":1}\n'
    c = OutputCollector(framed=False, limit=10_000)
    c.feed(STDOUT, b'{"b": 2}\n')
    assert build_result(req, c, backend="x", exit_code=0, duration_ms=1).output == {"b": 2}
    c = OutputCollector(framed=False, limit=10_000)
    c.feed(STDOUT, b"plain text")
    plain = build_result(req, c, backend="x", exit_code=0, duration_ms=1)
    assert plain.ok and plain.output is None and plain.stdout == "plain text"
    failed = build_result(req, c, backend="x", exit_code=3, duration_ms=1)
    assert not failed.ok and failed.error_type == "ExitCode"

"""The port in domain/sandbox.py: limits, clamping, request validation (no backend)."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import BadUserInput
from domain.sandbox import Sandbox, SandboxLimits, SandboxRequest, SandboxResult


def test_defaults() -> None:
    limits = SandboxLimits()
    assert (limits.memory_mb, limits.cpu_fraction, limits.pids) == (512, 0.5, 64)
    assert (limits.timeout_seconds, limits.output_bytes, limits.tmpfs_mb) == (30, 1_000_000, 64)


# Per limit: the tool's value, the tenant's maximum, and what clamping gives.
CLAMPS: dict[str, tuple[Any, Any, Any]] = {
    "memory_mb": (2048, 1024, 1024),
    "cpu_fraction": (0.25, 1.0, 0.25),
    "pids": (500, 128, 128),
    "timeout_seconds": (5, 60, 5),
    "output_bytes": (5_000_000, 2_000_000, 2_000_000),
    "tmpfs_mb": (16, 128, 16),
}


def test_clamp_keeps_each_limit_within_the_maximum() -> None:
    tool, tenant_max, clamped = (
        SandboxLimits(**{name: row[column] for name, row in CLAMPS.items()}) for column in range(3)
    )
    assert tool.clamp(tenant_max) == clamped
    assert tenant_max.clamp(tenant_max) == tenant_max


def test_invalid_limits_name_the_fields() -> None:
    with pytest.raises(BadUserInput) as info:
        SandboxLimits(memory_mb=1, cpu_fraction=0, pids=0, timeout_seconds=0)
    assert set(info.value.fields) == {"memoryMb", "cpuFraction", "pids", "timeoutSeconds"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tenant_id": "../etc"}, "tenantId"),
        ({"tenant_id": ""}, "tenantId"),
        ({"code": "  "}, "code"),
        ({"entrypoint": "not valid"}, "entrypoint"),
        ({"kind": "shell"}, "kind"),
        ({"kind": "command", "command": ()}, "command"),
        ({"env": {"BAD-NAME": "x"}}, "env.BAD-NAME"),
        ({"execution_id": "a/b"}, "executionId"),
        ({"image": "has space"}, "image"),
    ],
)
def test_bad_requests_are_rejected(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"tenant_id": "t1", "code": "def run(x):\n    return x\n"}
    with pytest.raises(BadUserInput) as info:
        SandboxRequest(**{**base, **kwargs})  # type: ignore[arg-type]
    assert field in info.value.fields


def test_requests_get_unique_execution_ids_and_are_frozen() -> None:
    a = SandboxRequest(tenant_id="t1", code="def run(x): return 1")
    b = SandboxRequest(tenant_id="t1", code="def run(x): return 1")
    assert a.execution_id != b.execution_id
    with pytest.raises(AttributeError):
        a.tenant_id = "t2"  # type: ignore[misc]
    cmd = SandboxRequest(tenant_id="t1", kind="command", command=("echo", "hi"))
    assert cmd.code == ""


def test_result_defaults_and_protocol() -> None:
    result = SandboxResult(ok=True, output={"a": 1})
    assert not result.timed_out and not result.oom_killed and not result.truncated
    assert result.usage.max_memory_bytes is None

    class Fake:
        name = "fake"

        async def run(self, request: SandboxRequest) -> SandboxResult:
            return SandboxResult(ok=True)

        async def close(self) -> None:
            return None

    assert isinstance(Fake(), Sandbox)

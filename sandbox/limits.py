"""Limit defaults and ceilings shared by the sandbox backends."""

from __future__ import annotations

from domain.sandbox import SandboxLimits

#: What a tool gets when it asks for nothing.
DEFAULT_LIMITS = SandboxLimits()

#: The deployment-wide ceiling a backend applies on top of the tenant maxima that the
#: use case already clamped to (defence in depth: a request can never exceed it).
DEFAULT_MAX_LIMITS = SandboxLimits(
    memory_mb=2048,
    cpu_fraction=2.0,
    pids=256,
    timeout_seconds=3600,
    output_bytes=16_000_000,
    tmpfs_mb=512,
)

#: Extra wall-clock the host waits beyond a run's timeout before it kills from outside.
KILL_GRACE_SECONDS = 2.0


def effective_limits(requested: SandboxLimits, ceiling: SandboxLimits) -> SandboxLimits:
    return requested.clamp(ceiling)

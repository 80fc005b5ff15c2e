"""Tool sandbox port: what a run asks for, what it reports, and the backend protocol.

Pure: no I/O here. Backends live in the top-level ``sandbox`` package (Docker via
aiodocker, bubblewrap as the local fallback); the wiring place picks one.

Result semantics shared by every backend:

- ``ok`` is true only when the process finished in time, within its limits, and (for
  ``kind="python"``) the entry function returned a JSON-serialisable value.
- ``output`` is that value (python), or stdout parsed as JSON when it parses (command).
- ``timed_out`` / ``oom_killed`` / ``truncated`` are decided by the host side, never by
  anything the sandboxed code prints.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from domain.errors import BadUserInput

JSONValue: TypeAlias = dict[str, "JSONValue"] | list["JSONValue"] | str | int | float | bool | None
SandboxKind = Literal["python", "command"]
SANDBOX_KINDS: tuple[SandboxKind, ...] = ("python", "command")

#: Tenant ids and execution ids end up in container labels, names and paths.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def new_execution_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource limits of one run. Every backend enforces all of them or says so."""

    memory_mb: int = 512
    cpu_fraction: float = 0.5
    pids: int = 64
    timeout_seconds: float = 30
    output_bytes: int = 1_000_000
    tmpfs_mb: int = 64

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        if self.memory_mb < 16:
            problems["memoryMb"] = "must be at least 16"
        if not 0 < self.cpu_fraction <= 64:
            problems["cpuFraction"] = "must be greater than 0 and at most 64"
        if self.pids < 4:
            problems["pids"] = "must be at least 4"
        if not 0 < self.timeout_seconds <= 24 * 3600:
            problems["timeoutSeconds"] = "must be greater than 0 and at most one day"
        if self.output_bytes < 1024:
            problems["outputBytes"] = "must be at least 1024"
        if self.tmpfs_mb < 1:
            problems["tmpfsMb"] = "must be at least 1"
        if problems:
            raise BadUserInput("invalid sandbox limits", problems)

    def clamp(self, maximum: SandboxLimits) -> SandboxLimits:
        """These limits, each lowered to ``maximum`` (per-tool limits within tenant maxima)."""
        return SandboxLimits(
            memory_mb=min(self.memory_mb, maximum.memory_mb),
            cpu_fraction=min(self.cpu_fraction, maximum.cpu_fraction),
            pids=min(self.pids, maximum.pids),
            timeout_seconds=min(self.timeout_seconds, maximum.timeout_seconds),
            output_bytes=min(self.output_bytes, maximum.output_bytes),
            tmpfs_mb=min(self.tmpfs_mb, maximum.tmpfs_mb),
        )


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    """One run of user code.

    ``kind="python"``: ``code`` defines ``entrypoint`` (default ``run``), called with
    ``input`` (a dict); its return value must be JSON-serialisable. ``image`` is optional
    (backend default). ``kind="command"``: ``command`` (argv) runs in ``image`` (Docker;
    the bubblewrap backend runs it from the host's read-only /usr) with ``input`` as JSON
    on stdin; stdout is parsed as JSON when it parses.
    """

    tenant_id: str
    kind: SandboxKind = "python"
    code: str = ""
    entrypoint: str = "run"
    image: str | None = None
    command: tuple[str, ...] = ()
    input: Mapping[str, JSONValue] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    execution_id: str = field(default_factory=new_execution_id)

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        if not _SAFE_ID.match(self.tenant_id):
            problems["tenantId"] = "must be 1-128 characters of [A-Za-z0-9_.-]"
        if not _SAFE_ID.match(self.execution_id):
            problems["executionId"] = "must be 1-128 characters of [A-Za-z0-9_.-]"
        if self.kind not in SANDBOX_KINDS:
            problems["kind"] = f"must be one of {', '.join(SANDBOX_KINDS)}"
        elif self.kind == "python":
            if not self.code.strip():
                problems["code"] = "must not be empty"
            if not _IDENTIFIER.match(self.entrypoint):
                problems["entrypoint"] = "must be a Python identifier"
        elif not self.command or any(not isinstance(a, str) or "\0" in a for a in self.command):
            problems["command"] = "must be a non-empty list of strings"
        if "\0" in self.code:
            problems["code"] = "must not contain NUL characters"
        if not isinstance(self.input, Mapping):
            problems["input"] = "must be an object"
        for name, value in self.env.items():
            if not _ENV_NAME.match(name) or not isinstance(value, str) or "\0" in value:
                problems[f"env.{name}"] = "invalid environment variable"
        if self.image is not None and (not self.image or any(c.isspace() for c in self.image)):
            problems["image"] = "invalid image name"
        if problems:
            raise BadUserInput("invalid sandbox request", problems)


@dataclass(frozen=True, slots=True)
class SandboxUsage:
    """Resource usage when the backend can tell (None when unknown)."""

    max_memory_bytes: int | None = None
    cpu_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """What one run did. ``stdout``/``stderr`` are decoded (UTF-8, replacement on error).

    For ``kind="python"``, ``stdout`` holds what the user code printed to standard
    output and ``stderr`` its standard error (tracebacks included); the result itself
    travels on a separate channel so prints cannot be mistaken for it.
    """

    ok: bool
    output: JSONValue = None
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    duration_ms: int = 0
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    error: str | None = None
    #: short machine-readable reason: SyntaxError, MemoryError, Timeout, OutputLimit, ...
    error_type: str | None = None
    usage: SandboxUsage = field(default_factory=SandboxUsage)
    backend: str = ""
    execution_id: str = ""


@runtime_checkable
class Sandbox(Protocol):
    """A backend that runs user code isolated from the API/worker process."""

    name: str

    async def run(self, request: SandboxRequest) -> SandboxResult:
        """Run one request. Never raises for anything the user code does; raises
        ``NotConfigured`` when the backend itself cannot run (engine gone, image missing)."""
        ...

    async def close(self) -> None:
        """Release everything (warm containers, client sessions). Idempotent."""
        ...

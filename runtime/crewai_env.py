"""Loading CrewAI: private storage, nothing in the user's home, one-time global hooks.

Importing CrewAI takes seconds and has side effects, so it is imported here only, on
first use (the first AGENT / CREW node of a process), from a worker thread:

- `crewai.events.event_listener` builds its trace listener at import time, which builds a
  `TokenManager` (writes `~/.local/share/crewai/credentials/secret.key`) and a `Settings`
  (creates `~/.config/crewai/`), even with tracing disabled. Both paths are derived from
  the home directory, with no variable to move them, so `_redirect_home_writes` points the
  two module-level locations at our storage directory before CrewAI is imported.
- CrewAI's own storage (`crewai_core.paths.db_storage_path`, memory, flow state) lives in
  `appdirs.user_data_dir(CREWAI_STORAGE_DIR)`; an absolute `CREWAI_STORAGE_DIR` is used as
  is, so it is set to a directory under the service's data dir.
- The offline defaults of `runtime/__init__.py` (telemetry off: without it the process
  stalls ~11 s at exit retrying telemetry) apply because this module imports `runtime`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import runtime  # noqa: F401  (offline environment defaults, before CrewAI)

_lock = threading.Lock()
_storage: Path | None = None
_loaded: ModuleType | None = None
_on_load: list[Any] = []


def configure(storage_dir: Path) -> None:
    """Where CrewAI may write (call before the first `load`; later calls are ignored once
    CrewAI is loaded, since it reads the locations at import time)."""
    global _storage
    with _lock:
        if _loaded is None:
            _storage = storage_dir.resolve()


def storage_dir() -> Path:
    if _storage is None:
        raise RuntimeError("runtime.crewai_env.configure(storage_dir) was not called")
    return _storage


def on_load(callback: Any) -> None:
    """Run `callback()` once CrewAI is imported (at once when it already is)."""
    with _lock:
        if _loaded is None:
            _on_load.append(callback)
            return
    callback()


def is_loaded() -> bool:
    return _loaded is not None


def load() -> ModuleType:
    """Import CrewAI (once per process, thread-safe) and return the `crewai` module.

    Blocking (seconds on first call): call it from a worker thread, never the event loop."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            base = storage_dir()
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.environ["CREWAI_STORAGE_DIR"] = str(base / "data")
            _redirect_home_writes(base)
            import crewai

            _loaded = crewai
            callbacks, _on_load[:] = list(_on_load), []
        else:
            return _loaded
    for callback in callbacks:
        callback()
    return _loaded


def _redirect_home_writes(base: Path) -> None:
    import crewai_core.settings as core_settings
    from crewai_core.token_manager import TokenManager

    credentials = base / "credentials"

    def _secure_storage_path() -> Path:
        credentials.mkdir(parents=True, exist_ok=True, mode=0o700)
        return credentials

    core_settings.DEFAULT_CONFIG_PATH = base / "config" / "settings.json"
    TokenManager._get_secure_storage_path = staticmethod(_secure_storage_path)  # type: ignore[method-assign]

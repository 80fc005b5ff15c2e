"""A sandbox that opens its backend on first use, so start-up never waits on Docker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from domain.sandbox import Sandbox, SandboxRequest, SandboxResult


class LazySandbox:
    """Implements the domain `Sandbox` port; `open` (e.g. a configured `create_sandbox`)
    runs once, on the first `run`, and again after `close`."""

    name = "lazy"

    def __init__(self, open: Callable[[], Awaitable[Sandbox]]) -> None:
        self._open = open
        self._inner: Sandbox | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Sandbox:
        """The backend, opened now if it is not open yet."""
        async with self._lock:
            if self._inner is None:
                self._inner = await self._open()
            return self._inner

    async def run(self, request: SandboxRequest) -> SandboxResult:
        return await (await self.get()).run(request)

    async def close(self) -> None:
        async with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            await inner.close()

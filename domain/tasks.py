"""Background asyncio tasks: ending one that its owner no longer needs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has ended, whatever it ends with: its
    owner is closing and has no use for the result or the error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task

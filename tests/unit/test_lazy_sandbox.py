"""LazySandbox opens its backend once, on first use, and again only after close()."""

from __future__ import annotations

import asyncio

from domain.sandbox import Sandbox, SandboxRequest, SandboxResult
from sandbox.lazy import LazySandbox


def _request(tenant: str) -> SandboxRequest:
    return SandboxRequest(tenant_id=tenant, code="def run(x):\n    return x\n")


class _Backend:
    name = "fake"

    def __init__(self) -> None:
        self.runs = 0
        self.closed = False

    async def run(self, request: SandboxRequest) -> SandboxResult:
        self.runs += 1
        return SandboxResult(ok=True, output=request.tenant_id)

    async def close(self) -> None:
        self.closed = True


class _Opener:
    def __init__(self) -> None:
        self.opened: list[_Backend] = []

    async def __call__(self) -> Sandbox:
        await asyncio.sleep(0.01)  # concurrent first runs overlap here
        backend = _Backend()
        self.opened.append(backend)
        return backend


async def test_nothing_opens_before_the_first_run() -> None:
    opener = _Opener()
    lazy = LazySandbox(opener)
    await lazy.close()
    assert opener.opened == []


async def test_concurrent_first_runs_open_one_backend() -> None:
    opener = _Opener()
    lazy = LazySandbox(opener)
    results = await asyncio.gather(*(lazy.run(_request(f"t{i}")) for i in range(5)))
    assert [r.output for r in results] == [f"t{i}" for i in range(5)]
    assert len(opener.opened) == 1 and opener.opened[0].runs == 5


async def test_close_closes_the_backend_and_the_next_run_reopens() -> None:
    opener = _Opener()
    lazy = LazySandbox(opener)
    await lazy.run(_request("t"))
    await lazy.close()
    assert opener.opened[0].closed
    await lazy.run(_request("t"))
    assert len(opener.opened) == 2 and not opener.opened[1].closed

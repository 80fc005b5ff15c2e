"""Per-request DataLoaders: one batched query per type per tick, inside the
caller's tenant (loaders are created per request, after authentication)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from strawberry.dataloader import DataLoader

from domain import identity
from domain.errors import NotFound

if TYPE_CHECKING:
    from server.bootstrap import Container


class Loaders:
    def __init__(
        self, container: Container, principal: Callable[[], Awaitable[identity.Principal]]
    ) -> None:
        self._c = container
        self._principal = principal
        self.tenant: DataLoader[str, identity.Tenant] = DataLoader(self._tenants)
        self.provider: DataLoader[str, Any] = DataLoader(self._batch("providers"))
        self.tool: DataLoader[str, Any] = DataLoader(self._batch("tools"))
        self.agent: DataLoader[str, Any] = DataLoader(self._batch("agents"))
        self.crew: DataLoader[str, Any] = DataLoader(self._batch("crews"))
        self.execution: DataLoader[str, Any] = DataLoader(self._batch("executions"))
        self.node_runs: DataLoader[str, list[Any]] = DataLoader(self._node_runs)
        self.flow_version: DataLoader[tuple[str, int], Any] = DataLoader(self._flow_versions)

    async def _tenants(self, ids: Sequence[str]) -> list[identity.Tenant | BaseException]:
        out: list[identity.Tenant | BaseException] = []
        for tenant_id in ids:
            try:
                out.append(await self._c.identity.tenant(tenant_id))
            except NotFound as exc:
                out.append(exc)
        return out

    async def _node_runs(self, ids: Sequence[str]) -> list[list[Any]]:
        principal = await self._principal()
        found = await self._c.executions.node_runs(principal, list(ids))
        return [found.get(i, []) for i in ids]

    async def _flow_versions(self, keys: Sequence[tuple[str, int]]) -> list[Any]:
        """Pinned flow versions (also of deleted flows, whose runs stay readable)."""
        principal = await self._principal()
        async with self._c.uow(principal.tenant_schema) as uow:
            return [await uow.flows.get_version(flow_id, version) for flow_id, version in keys]

    def _batch(self, attr: str) -> Callable[[Sequence[str]], Awaitable[list[Any]]]:
        async def load(ids: Sequence[str]) -> list[Any]:
            principal = await self._principal()
            async with self._c.uow(principal.tenant_schema) as uow:
                found = await getattr(uow, attr).get_many(list(ids))
            return [found.get(i) for i in ids]

        return load

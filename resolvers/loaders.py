"""Per-request DataLoaders: one batched query per type per request tick."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from strawberry.dataloader import DataLoader

from domain import identity
from domain.errors import NotFound

if TYPE_CHECKING:
    from server.bootstrap import Container


class Loaders:
    def __init__(self, container: Container) -> None:
        self._c = container
        self.tenant: DataLoader[str, identity.Tenant] = DataLoader(self._tenants)

    async def _tenants(self, ids: Sequence[str]) -> list[identity.Tenant | BaseException]:
        out: list[identity.Tenant | BaseException] = []
        for tenant_id in ids:
            try:
                out.append(await self._c.identity.tenant(tenant_id))
            except NotFound as exc:
                out.append(exc)
        return out

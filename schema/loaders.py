"""Per-request DataLoaders for nested fields: one batched use-case call per type per tick,
inside the caller's tenant (loaders are created per request, after authentication).

They live beside the types that use them: `schema/` may not import `resolvers/`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from strawberry.dataloader import DataLoader

from domain.agents import Agent
from domain.crews import Crew
from domain.errors import NotFound
from domain.executions.ports import NodeResult
from domain.executions.records import Execution
from domain.flows.graph import FlowValidation
from domain.flows.service import Flow
from domain.identity import Principal, Tenant
from domain.llm import Usage
from domain.providers import LlmProvider
from domain.resources import Resource, ResourceService
from domain.tools import Tool
from schema.context import Services

E = TypeVar("E", bound=Resource)


class Loaders:
    def __init__(self, services: Services, principal: Callable[[], Awaitable[Principal]]) -> None:
        self._s = services
        self._principal = principal
        self.tenant: DataLoader[str, Tenant] = DataLoader(self._tenants)
        self.provider: DataLoader[str, LlmProvider | None] = DataLoader(
            self._by_id(services.providers)
        )
        self.tool: DataLoader[str, Tool | None] = DataLoader(self._by_id(services.tools))
        self.agent: DataLoader[str, Agent | None] = DataLoader(self._by_id(services.agents))
        self.crew: DataLoader[str, Crew | None] = DataLoader(self._by_id(services.crews))
        self.execution: DataLoader[str, Execution | None] = DataLoader(self._executions)
        self.node_runs: DataLoader[str, list[NodeResult]] = DataLoader(self._node_runs)
        self.flow_version: DataLoader[tuple[str, int], Flow | None] = DataLoader(
            self._flow_versions
        )
        self.node_usage: DataLoader[tuple[str, str], Usage | None] = DataLoader(self._node_usage)
        self.execution_usage: DataLoader[str, Usage] = DataLoader(self._execution_usage)
        # Keyed by the flow itself; cached per stored version.
        self.flow_validation: DataLoader[Flow, FlowValidation] = DataLoader(
            self._flow_validations, cache_key_fn=lambda f: (f.id, f.version)
        )

    async def _tenants(self, ids: Sequence[str]) -> list[Tenant | BaseException]:
        out: list[Tenant | BaseException] = []
        for tenant_id in ids:
            try:
                out.append(await self._s.identity.tenant(tenant_id))
            except NotFound as exc:
                out.append(exc)
        return out

    def _by_id(
        self, service: ResourceService[E]
    ) -> Callable[[Sequence[str]], Awaitable[list[E | None]]]:
        async def load(ids: Sequence[str]) -> list[E | None]:
            found = await service.get_many(await self._principal(), list(ids))
            return [found.get(i) for i in ids]

        return load

    async def _executions(self, ids: Sequence[str]) -> list[Execution | None]:
        """Only `executionUpdates` records (sent without inputs) need this: one id per
        event, since a subscription resets its loaders before each event."""
        principal = await self._principal()
        out: list[Execution | None] = []
        for execution_id in ids:
            try:
                out.append(await self._s.executions.get(principal, execution_id))
            except NotFound:
                out.append(None)
        return out

    async def _node_runs(self, ids: Sequence[str]) -> list[list[NodeResult]]:
        found = await self._s.executions.node_runs(await self._principal(), list(ids))
        return [found.get(i, []) for i in ids]

    async def _node_usage(self, keys: Sequence[tuple[str, str]]) -> list[Usage | None]:
        found = await self._s.usage.for_nodes(await self._principal(), list(keys))
        return [found.get(k) for k in keys]

    async def _execution_usage(self, ids: Sequence[str]) -> list[Usage]:
        found = await self._s.usage.for_executions(await self._principal(), list(ids))
        return [found.get(i, Usage()) for i in ids]

    async def _flow_versions(self, keys: Sequence[tuple[str, int]]) -> list[Flow | None]:
        return await self._s.flows.pinned_versions(await self._principal(), list(keys))

    async def _flow_validations(self, flows: Sequence[Flow]) -> list[FlowValidation]:
        return await self._s.flows.validations_of(await self._principal(), list(flows))

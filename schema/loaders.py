"""Per-request DataLoaders for nested fields: one batched use-case call per type per tick,
inside the caller's tenant (loaders are created per request, after authentication).

They live beside the types that use them: `schema/` may not import `resolvers/`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property
from typing import TypeVar

from strawberry.dataloader import DataLoader

from domain.agents import Agent
from domain.crews import Crew
from domain.errors import NotFound
from domain.executions.approvals import Approval
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
    """Each loader is built on first use: most requests use none or one of them."""

    def __init__(self, services: Services, principal: Callable[[], Awaitable[Principal]]) -> None:
        self._s = services
        self._principal = principal

    @cached_property
    def tenant(self) -> DataLoader[str, Tenant]:
        return DataLoader(self._tenants)

    @cached_property
    def provider(self) -> DataLoader[str, LlmProvider | None]:
        return DataLoader(self._by_id(self._s.providers))

    @cached_property
    def tool(self) -> DataLoader[str, Tool | None]:
        return DataLoader(self._by_id(self._s.tools))

    @cached_property
    def agent(self) -> DataLoader[str, Agent | None]:
        return DataLoader(self._by_id(self._s.agents))

    @cached_property
    def crew(self) -> DataLoader[str, Crew | None]:
        return DataLoader(self._by_id(self._s.crews))

    @cached_property
    def execution(self) -> DataLoader[str, Execution | None]:
        return DataLoader(self._executions)

    @cached_property
    def node_runs(self) -> DataLoader[str, list[NodeResult]]:
        return DataLoader(self._node_runs)

    @cached_property
    def flow_version(self) -> DataLoader[tuple[str, int], Flow | None]:
        return DataLoader(self._flow_versions)

    @cached_property
    def node_usage(self) -> DataLoader[tuple[str, str], Usage | None]:
        return DataLoader(self._node_usage)

    @cached_property
    def execution_usage(self) -> DataLoader[str, Usage]:
        return DataLoader(self._execution_usage)

    @cached_property
    def pending_approvals(self) -> DataLoader[Execution, list[Approval]]:
        # Keyed by the execution itself (whether it can still be answered); not cached, as
        # a mutation answering an approval is followed by a read of what is left.
        return DataLoader(self._pending_approvals, cache=False)

    @cached_property
    def flow_validation(self) -> DataLoader[Flow, FlowValidation]:
        # Keyed by the flow itself; cached per stored version.
        return DataLoader(self._flow_validations, cache_key_fn=lambda f: (f.id, f.version))

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

    async def _pending_approvals(self, executions: Sequence[Execution]) -> list[list[Approval]]:
        found = await self._s.executions.pending_approvals_of(
            await self._principal(), list(executions)
        )
        return [found.get(e.id, []) for e in executions]

    async def _flow_versions(self, keys: Sequence[tuple[str, int]]) -> list[Flow | None]:
        return await self._s.flows.pinned_versions(await self._principal(), list(keys))

    async def _flow_validations(self, flows: Sequence[Flow]) -> list[FlowValidation]:
        return await self._s.flows.validations_of(await self._principal(), list(flows))

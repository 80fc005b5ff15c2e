"""What `info.context` offers types, permissions and resolvers.

The request context (built in `server/`) carries the caller, the per-request DataLoaders
and `Services`: the use cases of `domain/`, never an adapter, so nothing in the GraphQL
layer can reach the database, Redis or the sandbox except through a use case.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol, TypeAlias

import strawberry

from domain.agents import AgentService
from domain.audit import AuditService
from domain.auth import IdentityService
from domain.chat.service import ChatService
from domain.crews import CrewService
from domain.executions.service import ExecutionService
from domain.flow_documents import FlowDocumentService
from domain.flows.service import FlowService
from domain.identity import Principal
from domain.llm_calls import LlmService
from domain.ports import RateLimiter
from domain.providers import ProviderService
from domain.quotas import TenantQuotas
from domain.schedules import ScheduleService
from domain.tool_runs import ToolRunService
from domain.tools import ToolService
from domain.usage import UsageService
from domain.webhooks import WebhookService

if TYPE_CHECKING:
    from schema.loaders import Loaders


class ApiSettings(Protocol):
    """The settings the GraphQL layer reads (server.settings.Settings has them)."""

    @property
    def page_size_max(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Services:
    """The use cases a request may call. A new one is one field here, named like the
    wiring container's attribute that holds it (`Services.pick` copies by name)."""

    settings: ApiSettings
    limiter: RateLimiter
    identity: IdentityService
    providers: ProviderService
    tools: ToolService
    agents: AgentService
    crews: CrewService
    flows: FlowService
    tool_runs: ToolRunService
    executions: ExecutionService
    llm: LlmService
    usage: UsageService
    quotas: TenantQuotas
    schedules: ScheduleService
    webhooks: WebhookService
    flow_documents: FlowDocumentService
    chat: ChatService
    audit: AuditService

    @classmethod
    def pick(cls, source: object) -> Services:
        """Our fields, taken by name from `source` (server/bootstrap.py's container)."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})


class RequestContext(Protocol):
    @property
    def services(self) -> Services: ...

    @property
    def settings(self) -> ApiSettings: ...

    @property
    def loaders(self) -> Loaders: ...

    def reset_loaders(self) -> None:
        """Forget cached loads (a subscription does before each event it sends)."""

    async def principal(self) -> Principal:
        """The authenticated caller; raises UNAUTHENTICATED without valid credentials."""

    async def rate_limit(self, name: str, *identifiers: str) -> None:
        """Count one `name` attempt of this client; raises RATE_LIMITED over the limit."""


Info: TypeAlias = strawberry.Info[RequestContext, None]
"""The `info` of every resolver and nested field."""

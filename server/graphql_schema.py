"""The GraphQL schema: the root Query, Mutation and Subscription assembled from the
resolvers, guarded by permissions. It lives in `server/` because it is the one place that
sees both resolvers and types (`schema/` holds the types and never imports resolvers)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime

import strawberry
from graphql.error import GraphQLError
from strawberry.scalars import JSON
from strawberry.types import ExecutionContext

from resolvers import agents as agents_r
from resolvers import audit as audit_r
from resolvers import auth as auth_r
from resolvers import chat as chat_r
from resolvers import crews as crews_r
from resolvers import executions as executions_r
from resolvers import flow_documents as flow_documents_r
from resolvers import flows as flows_r
from resolvers import providers as providers_r
from resolvers import schedules as schedules_r
from resolvers import subscriptions as sub_r
from resolvers import tools as tools_r
from resolvers import usage as usage_r
from resolvers import users as users_r
from resolvers import webhooks as webhooks_r
from schema.agents import Agent
from schema.audit import AuditEntry, CanReadAuditLog
from schema.auth import ApiKey, ApiKeyPayload, AuthPayload
from schema.automation import CreateWebhookPayload, Schedule, Webhook
from schema.chat import ChatMessage, ChatSession, ChatToken
from schema.crews import Crew
from schema.executions import Execution, ExecutionEvent
from schema.extensions import pipeline
from schema.flow_documents import FlowTemplate, ImportFlowPayload
from schema.flows import Flow, FlowValidation
from schema.permissions import (
    CanManageApiKeys,
    CanManageProviders,
    CanManageUsers,
    CanManageWebhooks,
    CanRead,
    CanRun,
    CanWrite,
    IsAuthenticated,
)
from schema.providers import LlmProvider
from schema.relay import Connection
from schema.tools import Tool, ToolValidation
from schema.usage import UsageDay
from schema.users import Tenant, User
from server.access_log import record_access
from server.metrics import record_operation


@strawberry.type
class Query:
    me: User = strawberry.field(resolver=users_r.me, permission_classes=[IsAuthenticated])
    tenant: Tenant = strawberry.field(resolver=users_r.tenant, permission_classes=[IsAuthenticated])
    users: Connection[User] = strawberry.field(resolver=users_r.users, permission_classes=[CanRead])
    api_keys: list[ApiKey] = strawberry.field(
        resolver=auth_r.api_keys, permission_classes=[CanManageApiKeys]
    )
    llm_providers: Connection[LlmProvider] = strawberry.field(
        resolver=providers_r.llm_providers, permission_classes=[CanRead]
    )
    llm_provider: LlmProvider | None = strawberry.field(
        resolver=providers_r.llm_provider, permission_classes=[CanRead]
    )
    agents: Connection[Agent] = strawberry.field(
        resolver=agents_r.agents, permission_classes=[CanRead]
    )
    agent: Agent | None = strawberry.field(resolver=agents_r.agent, permission_classes=[CanRead])
    crews: Connection[Crew] = strawberry.field(resolver=crews_r.crews, permission_classes=[CanRead])
    crew: Crew | None = strawberry.field(resolver=crews_r.crew, permission_classes=[CanRead])
    tools: Connection[Tool] = strawberry.field(resolver=tools_r.tools, permission_classes=[CanRead])
    tool: Tool | None = strawberry.field(resolver=tools_r.tool, permission_classes=[CanRead])
    flows: Connection[Flow] = strawberry.field(resolver=flows_r.flows, permission_classes=[CanRead])
    flow: Flow | None = strawberry.field(resolver=flows_r.flow, permission_classes=[CanRead])
    flow_version: Flow | None = strawberry.field(
        resolver=flows_r.flow_version,
        permission_classes=[CanRead],
        description="One immutable earlier (or the current) version of a flow.",
    )
    validate_flow: FlowValidation = strawberry.field(
        resolver=flows_r.validate_flow, permission_classes=[CanRead]
    )
    export_flow: JSON = strawberry.field(
        resolver=flow_documents_r.export_flow,
        permission_classes=[CanRead],
        description="The flow's current version with the agents, crews and tools it uses, "
        'as a self-contained document ({"format": "crewgraph.flow/v1", ...}); LLM '
        "providers by name and model only, never keys.",
    )
    flow_templates: list[FlowTemplate] = strawberry.field(
        resolver=flow_documents_r.flow_templates,
        permission_classes=[CanRead],
        description="Shipped flow templates, each an export document for importFlow.",
    )
    executions: Connection[Execution] = strawberry.field(
        resolver=executions_r.executions,
        permission_classes=[CanRead],
        description="Executions of the team, newest first.",
    )
    execution: Execution | None = strawberry.field(
        resolver=executions_r.execution, permission_classes=[CanRead]
    )
    chat_sessions: Connection[ChatSession] = strawberry.field(
        resolver=chat_r.chat_sessions,
        permission_classes=[CanRead],
        description="Chat sessions of the team, oldest first.",
    )
    chat_session: ChatSession | None = strawberry.field(
        resolver=chat_r.chat_session, permission_classes=[CanRead]
    )
    audit_log: Connection[AuditEntry] = strawberry.field(
        resolver=audit_r.audit_log,
        permission_classes=[CanReadAuditLog],
        description="The team's audit log, newest first (admins). `action` keeps one kind "
        'of entry, e.g. "auth.login_failed". Entries appear within about a second.',
    )
    usage: list[UsageDay] = strawberry.field(
        resolver=usage_r.usage,
        permission_classes=[CanRead],
        description="LLM usage of the team per UTC day, newest first, for the last `days` "
        "days (1 to 366).",
    )
    schedules: Connection[Schedule] = strawberry.field(
        resolver=schedules_r.schedules,
        permission_classes=[CanRead],
        description="Schedules of the team (of one flow with flowId), oldest first.",
    )
    schedule: Schedule | None = strawberry.field(
        resolver=schedules_r.schedule, permission_classes=[CanRead]
    )
    webhooks: Connection[Webhook] = strawberry.field(
        resolver=webhooks_r.webhooks,
        permission_classes=[CanManageWebhooks],
        description="Outgoing webhooks of the team, oldest first (admins).",
    )
    webhook: Webhook | None = strawberry.field(
        resolver=webhooks_r.webhook, permission_classes=[CanManageWebhooks]
    )


@strawberry.type
class Mutation:
    register: AuthPayload = strawberry.mutation(resolver=auth_r.register)
    login: AuthPayload = strawberry.mutation(resolver=auth_r.login)
    refresh_token: AuthPayload = strawberry.mutation(resolver=auth_r.refresh_token)
    logout: bool = strawberry.mutation(resolver=auth_r.logout)

    create_user: User = strawberry.mutation(
        resolver=users_r.create_user, permission_classes=[CanManageUsers]
    )
    update_user_role: User = strawberry.mutation(
        resolver=users_r.update_user_role, permission_classes=[CanManageUsers]
    )
    deactivate_user: User = strawberry.mutation(
        resolver=users_r.deactivate_user, permission_classes=[CanManageUsers]
    )
    create_api_key: ApiKeyPayload = strawberry.mutation(
        resolver=auth_r.create_api_key, permission_classes=[CanManageApiKeys]
    )
    revoke_api_key: bool = strawberry.mutation(
        resolver=auth_r.revoke_api_key, permission_classes=[CanManageApiKeys]
    )

    create_llm_provider: LlmProvider = strawberry.mutation(
        resolver=providers_r.create_llm_provider, permission_classes=[CanManageProviders]
    )
    update_llm_provider: LlmProvider = strawberry.mutation(
        resolver=providers_r.update_llm_provider, permission_classes=[CanManageProviders]
    )
    delete_llm_provider: bool = strawberry.mutation(
        resolver=providers_r.delete_llm_provider, permission_classes=[CanManageProviders]
    )
    test_llm_provider: JSON = strawberry.mutation(
        resolver=providers_r.test_llm_provider,
        permission_classes=[CanManageProviders],
        description="A real one-token call to the provider: {ok, latencyMs, model, error}.",
    )

    create_agent: Agent = strawberry.mutation(
        resolver=agents_r.create_agent, permission_classes=[CanWrite]
    )
    update_agent: Agent = strawberry.mutation(
        resolver=agents_r.update_agent, permission_classes=[CanWrite]
    )
    delete_agent: bool = strawberry.mutation(
        resolver=agents_r.delete_agent, permission_classes=[CanWrite]
    )

    create_crew: Crew = strawberry.mutation(
        resolver=crews_r.create_crew, permission_classes=[CanWrite]
    )
    update_crew: Crew = strawberry.mutation(
        resolver=crews_r.update_crew, permission_classes=[CanWrite]
    )
    delete_crew: bool = strawberry.mutation(
        resolver=crews_r.delete_crew, permission_classes=[CanWrite]
    )

    create_tool: Tool = strawberry.mutation(
        resolver=tools_r.create_tool, permission_classes=[CanWrite]
    )
    update_tool: Tool = strawberry.mutation(
        resolver=tools_r.update_tool, permission_classes=[CanWrite]
    )
    delete_tool: bool = strawberry.mutation(
        resolver=tools_r.delete_tool, permission_classes=[CanWrite]
    )
    validate_tool: ToolValidation = strawberry.mutation(
        resolver=tools_r.validate_tool, permission_classes=[CanRun]
    )

    create_flow: Flow = strawberry.mutation(
        resolver=flows_r.create_flow, permission_classes=[CanWrite]
    )
    update_flow: Flow = strawberry.mutation(
        resolver=flows_r.update_flow, permission_classes=[CanWrite]
    )
    delete_flow: bool = strawberry.mutation(
        resolver=flows_r.delete_flow, permission_classes=[CanWrite]
    )
    import_flow: ImportFlowPayload = strawberry.mutation(
        resolver=flow_documents_r.import_flow,
        permission_classes=[CanWrite],
        description="Recreate an exported flow document in this team, in one transaction. "
        "Providers bind by providerMap, else by name.",
    )
    execute_flow: Execution = strawberry.mutation(
        resolver=executions_r.execute_flow,
        permission_classes=[CanRun],
        description="Run the flow's current version; returns the PENDING execution at once.",
    )
    test_crew: Execution = strawberry.mutation(
        resolver=executions_r.test_crew,
        permission_classes=[CanRun],
        description="Run a crew as a one-node flow (input → crew → output).",
    )
    cancel_execution: Execution = strawberry.mutation(
        resolver=executions_r.cancel_execution, permission_classes=[CanRun]
    )
    resolve_approval: Execution = strawberry.mutation(
        resolver=executions_r.resolve_approval,
        permission_classes=[CanRun],
        description="Answer an APPROVAL node of a run: approve or reject, with `input` "
        "matching its inputSchema. A waiting run resumes; a second answer is CONFLICT.",
    )

    create_schedule: Schedule = strawberry.mutation(
        resolver=schedules_r.create_schedule, permission_classes=[CanWrite]
    )
    update_schedule: Schedule = strawberry.mutation(
        resolver=schedules_r.update_schedule,
        permission_classes=[CanWrite],
        description="Null optional fields keep their stored values.",
    )
    delete_schedule: bool = strawberry.mutation(
        resolver=schedules_r.delete_schedule, permission_classes=[CanWrite]
    )
    create_webhook: CreateWebhookPayload = strawberry.mutation(
        resolver=webhooks_r.create_webhook,
        permission_classes=[CanManageWebhooks],
        description="The signing secret is in the payload, and only there.",
    )
    rotate_webhook_secret: CreateWebhookPayload = strawberry.mutation(
        resolver=webhooks_r.rotate_webhook_secret,
        permission_classes=[CanManageWebhooks],
        description="A new signing secret; the old one stops signing at once.",
    )
    update_webhook: Webhook = strawberry.mutation(
        resolver=webhooks_r.update_webhook, permission_classes=[CanManageWebhooks]
    )
    delete_webhook: bool = strawberry.mutation(
        resolver=webhooks_r.delete_webhook, permission_classes=[CanManageWebhooks]
    )

    create_chat_session: ChatSession = strawberry.mutation(
        resolver=chat_r.create_chat_session, permission_classes=[CanWrite]
    )
    send_chat_message: ChatMessage = strawberry.mutation(
        resolver=chat_r.send_chat_message,
        permission_classes=[CanWrite],
        description="Stores the user message and returns it at once; the reply streams on "
        "chatTokens. CONFLICT while a reply streams, LIMIT_EXCEEDED when the session is full.",
    )
    cancel_chat_reply: ChatMessage | None = strawberry.mutation(
        resolver=chat_r.cancel_chat_reply,
        permission_classes=[CanWrite],
        description="Stops the streaming reply; returns it stored CANCELLED (null when "
        "nothing streams).",
    )
    delete_chat_session: bool = strawberry.mutation(
        resolver=chat_r.delete_chat_session, permission_classes=[CanWrite]
    )


@strawberry.type
class Subscription:
    heartbeat: AsyncGenerator[datetime, None] = strawberry.subscription(
        resolver=sub_r.heartbeat, permission_classes=[IsAuthenticated]
    )
    execution_events: AsyncGenerator[ExecutionEvent, None] = strawberry.subscription(
        resolver=executions_r.execution_events,
        permission_classes=[CanRead],
        description="Stored events after afterSequence, then live ones, each exactly once "
        "and in order; completes after the terminal event.",
    )
    chat_tokens: AsyncGenerator[ChatToken, None] = strawberry.subscription(
        resolver=chat_r.chat_tokens,
        permission_classes=[CanRead],
        description="Reply tokens of the session, from the reply under way (if any) on; "
        "stays open across replies until the client unsubscribes.",
    )
    execution_updates: AsyncGenerator[Execution, None] = strawberry.subscription(
        resolver=executions_r.execution_updates,
        permission_classes=[CanRead],
        description="Every status change of the team's executions, from now on.",
    )


class CrewgraphSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Unexpected errors are logged where they are classified (schema.errors)."""


def build_schema(
    *,
    max_depth: int = 12,
    max_aliases: int = 30,
    max_tokens: int = 5000,
    introspection: bool = True,
    max_cost: int = 20_000,
    page_size_max: int = 100,
) -> strawberry.Schema:
    """`introspection=False` (the production profile) refuses `__schema` / `__type` and
    strips schema hints from validation errors."""
    # One extension doing what the separate ones in schema/extensions.py do, in their
    # order; the access log's recorder and the metrics see the final error codes.
    extensions = [
        pipeline(
            max_depth=max_depth,
            max_aliases=max_aliases,
            max_tokens=max_tokens,
            max_cost=max_cost,
            page_size_max=page_size_max,
            introspection=introspection,
            after_operation=(record_operation, record_access),
        )
    ]
    return CrewgraphSchema(
        query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions
    )


schema = build_schema()

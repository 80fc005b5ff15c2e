"""Table definitions. `public` holds identity; tenant tables use the placeholder
schema `tenant`, which each session maps to the caller's schema via
`schema_translate_map`."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

TENANT = "tenant"  # placeholder translated per session
metadata = sa.MetaData()


def _id() -> sa.Column[str]:
    return sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else sa.func.now(),
    )


# -- public ---------------------------------------------------------------

tenants = sa.Table(
    "tenants",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("slug", sa.Text, nullable=False, unique=True),
    sa.Column("schema_name", sa.Text, nullable=False, unique=True),
    sa.Column("settings", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    _ts("created_at"),
    # Operator-controlled: suspension and per-tenant quota overrides (NULL/absent = default).
    sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'ACTIVE'")),
    sa.Column("suspended_reason", sa.Text, nullable=True),
    sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("quota", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.CheckConstraint("status IN ('ACTIVE', 'SUSPENDED')", name="tenants_status_check"),
    schema="public",
)

users = sa.Table(
    "users",
    metadata,
    _id(),
    sa.Column(
        "tenant_id", sa.Uuid(as_uuid=False), sa.ForeignKey("public.tenants.id"), nullable=False
    ),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    _ts("created_at"),
    sa.UniqueConstraint("tenant_id", "email", name="users_tenant_email_key"),
    sa.Index("users_email_idx", "email"),
    schema="public",
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    _id(),
    sa.Column("tenant_id", sa.Uuid(as_uuid=False), nullable=False),
    sa.Column("user_id", sa.Uuid(as_uuid=False), sa.ForeignKey("public.users.id"), nullable=False),
    sa.Column("family_id", sa.Uuid(as_uuid=False), nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    _ts("used_at", nullable=True),
    _ts("revoked_at", nullable=True),
    _ts("created_at"),
    sa.Index("refresh_tokens_family_idx", "family_id"),
    sa.Index("refresh_tokens_user_idx", "user_id"),
    schema="public",
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    _id(),
    sa.Column(
        "tenant_id", sa.Uuid(as_uuid=False), sa.ForeignKey("public.tenants.id"), nullable=False
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    _ts("created_at"),
    _ts("revoked_at", nullable=True),
    schema="public",
)

# Tenant schemas created ahead of registrations at the tenant head `heads` (sorted,
# comma-separated); no tenant_id: never part of a tenant's backup (persistence/spare_schemas.py).
spare_tenant_schemas = sa.Table(
    "spare_tenant_schemas",
    metadata,
    sa.Column("schema_name", sa.Text, primary_key=True),
    sa.Column("heads", sa.Text, nullable=False),
    _ts("created_at"),
    sa.Index("spare_tenant_schemas_heads_idx", "heads", "created_at"),
    schema="public",
)


# -- tenant resources ------------------------------------------------------


def _tenant_fk(target: str, **kw: object) -> sa.ForeignKey:
    return sa.ForeignKey(f"{TENANT}.{target}", **kw)  # type: ignore[arg-type]


def _versioned() -> list[sa.Column[object]]:
    return [
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        _ts("created_at"),
        _ts("updated_at"),
    ]


UUID = sa.Uuid(as_uuid=False)


def _ordered_link(
    name: str, owner: tuple[str, str], item: tuple[str, str], item_index: str
) -> sa.Table:
    """An owner's ordered list of other resources, `(column, referenced table)` each:
    deleting the owner deletes its rows; a resource still listed cannot be deleted."""
    (owner_column, owner_table), (item_column, item_table) = owner, item
    owner_fk = _tenant_fk(f"{owner_table}.id", ondelete="CASCADE")
    item_fk = _tenant_fk(f"{item_table}.id", ondelete="RESTRICT")
    return sa.Table(
        name,
        metadata,
        sa.Column(owner_column, UUID, owner_fk, primary_key=True),
        sa.Column(item_column, UUID, item_fk, primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Index(item_index, item_column),
        schema=TENANT,
    )


# Key/value settings of the tenant (limits, network allowance for tools, ...).
tenant_settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", JSONB, nullable=False),
    schema=TENANT,
)

llm_providers = sa.Table(
    "llm_providers",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("base_url", sa.Text),
    sa.Column("api_key_ciphertext", sa.LargeBinary),
    sa.Column("api_key_key_id", sa.Text),
    *_versioned(),
    sa.Column("timeout_seconds", sa.Float, nullable=False, server_default="60"),
    sa.Column("max_retries", sa.Integer, nullable=False, server_default="1"),
    schema=TENANT,
)


# Ordered fallbacks of a provider (one level).
llm_provider_fallbacks = _ordered_link(
    "llm_provider_fallbacks",
    ("provider_id", "llm_providers"),
    ("fallback_id", "llm_providers"),
    "llm_provider_fallbacks_fallback_idx",
)

# One row per request to an LLM provider. No foreign keys: usage outlives providers
# and is written even while its execution is being cancelled.
llm_usage = sa.Table(
    "llm_usage",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("provider_id", UUID, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float),
    sa.Column("execution_id", UUID),
    sa.Column("node_id", sa.Text),
    sa.Column("chat_session_id", sa.Text),
    _ts("created_at"),
    sa.Index("llm_usage_execution_idx", "execution_id", "node_id"),
    sa.Index("llm_usage_created_idx", "created_at"),
    schema=TENANT,
)

tools = sa.Table(
    "tools",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("config", JSONB, nullable=False),
    sa.Column("input_schema", JSONB),
    *_versioned(),
    schema=TENANT,
)

agents = sa.Table(
    "agents",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("goal", sa.Text, nullable=False),
    sa.Column("backstory", sa.Text, nullable=False),
    sa.Column("llm_provider_id", UUID, _tenant_fk("llm_providers.id", ondelete="RESTRICT")),
    sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    *_versioned(),
    sa.Index("agents_llm_provider_id_idx", "llm_provider_id"),
    schema=TENANT,
)

agent_tools = _ordered_link(
    "agent_tools", ("agent_id", "agents"), ("tool_id", "tools"), "agent_tools_tool_id_idx"
)

crews = sa.Table(
    "crews",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("process", sa.Text, nullable=False),
    sa.Column("manager_agent_id", UUID, _tenant_fk("agents.id", ondelete="RESTRICT")),
    sa.Column("manager_llm_provider_id", UUID, _tenant_fk("llm_providers.id", ondelete="RESTRICT")),
    sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    *_versioned(),
    schema=TENANT,
)

crew_agents = _ordered_link(
    "crew_agents", ("crew_id", "crews"), ("agent_id", "agents"), "crew_agents_agent_id_idx"
)

crew_tasks = sa.Table(
    "crew_tasks",
    metadata,
    sa.Column("crew_id", UUID, _tenant_fk("crews.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("expected_output", sa.Text, nullable=False),
    sa.Column("agent_id", UUID, _tenant_fk("agents.id", ondelete="RESTRICT"), nullable=False),
    sa.Index("crew_tasks_agent_id_idx", "agent_id"),
    schema=TENANT,
)

flows = sa.Table(
    "flows",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    *_versioned(),
    # Names are unique among live flows; a deleted flow frees its name.
    sa.Index(
        "flows_live_name_key",
        "name",
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    ),
    schema=TENANT,
)

flow_versions = sa.Table(
    "flow_versions",
    metadata,
    sa.Column("flow_id", UUID, _tenant_fk("flows.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("nodes", JSONB, nullable=False),
    sa.Column("edges", JSONB, nullable=False),
    sa.Column("created_by", sa.Text),
    _ts("created_at"),
    schema=TENANT,
)

# What the current version of each live flow references; foreign keys make
# deleting a referenced agent/crew/tool/provider impossible, not just refused.
flow_refs = sa.Table(
    "flow_refs",
    metadata,
    sa.Column("flow_id", UUID, _tenant_fk("flows.id", ondelete="CASCADE"), nullable=False),
    sa.Column("agent_id", UUID, _tenant_fk("agents.id", ondelete="RESTRICT")),
    sa.Column("crew_id", UUID, _tenant_fk("crews.id", ondelete="RESTRICT")),
    sa.Column("tool_id", UUID, _tenant_fk("tools.id", ondelete="RESTRICT")),
    sa.Column("llm_provider_id", UUID, _tenant_fk("llm_providers.id", ondelete="RESTRICT")),
    sa.Index("flow_refs_flow_idx", "flow_id"),
    *(
        sa.Index(f"flow_refs_{c}_idx", c)
        for c in ("agent_id", "crew_id", "tool_id", "llm_provider_id")
    ),
    schema=TENANT,
)


# -- chat (tenant) ---------------------------------------------------------
# A session is bound to one LLM provider or one agent (SET NULL when that is deleted: the
# session stays readable, sending is refused). `message_count` counts its messages (kept
# here: counting the message store is slow); `last_seq` numbers them. `reply_id` is the
# reply being generated (the lock against a second send), claimed by `reply_owner` until
# `reply_expires_at`. Messages live in MongoDB.

chat_sessions = sa.Table(
    "chat_sessions",
    metadata,
    _id(),
    sa.Column("title", sa.Text),
    sa.Column("llm_provider_id", UUID, _tenant_fk("llm_providers.id", ondelete="SET NULL")),
    sa.Column("agent_id", UUID, _tenant_fk("agents.id", ondelete="SET NULL")),
    sa.Column("system_prompt", sa.Text),
    sa.Column("message_limit", sa.Integer, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reply_id", UUID),
    sa.Column("reply_owner", sa.Text),
    sa.Column("reply_expires_at", sa.DateTime(timezone=True)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_by", sa.Text),
    _ts("created_at"),
    sa.CheckConstraint(
        "llm_provider_id IS NULL OR agent_id IS NULL", name="chat_sessions_one_target"
    ),
    sa.Index("chat_sessions_created_idx", "created_at", "id"),
    sa.Index("chat_sessions_llm_provider_idx", "llm_provider_id"),
    sa.Index("chat_sessions_agent_idx", "agent_id"),
    schema=TENANT,
)


# -- executions (tenant) ---------------------------------------------------
# One row per run of a flow (pinned to a flow version) or of a crew (`graph`
# holds the one-node graph). PostgreSQL is the source of truth: the worker that
# runs an execution holds a lease (`lease_owner`, `lease_expires_at`) it renews;
# `last_sequence` is the per-execution event counter, incremented under the row
# lock in the same transaction as the event insert (gap-free).

executions = sa.Table(
    "executions",
    metadata,
    _id(),
    sa.Column("flow_id", UUID),
    sa.Column("flow_version", sa.Integer),
    sa.Column("crew_id", UUID, _tenant_fk("crews.id", ondelete="SET NULL")),
    sa.Column("graph", JSONB),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("inputs", JSONB, nullable=False),
    sa.Column("outputs", JSONB),
    sa.Column("error", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_sequence", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_by", sa.Text),
    _ts("created_at"),
    _ts("started_at", nullable=True),
    _ts("finished_at", nullable=True),
    # Waiting at APPROVAL nodes: since when, how long before (not counted toward the flow
    # timeout), and whether the next claim is the resume after an answer (no new attempt).
    _ts("waiting_since", nullable=True),
    sa.Column("waited_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("resume_pending", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.ForeignKeyConstraint(
        ["flow_id", "flow_version"],
        [f"{TENANT}.flow_versions.flow_id", f"{TENANT}.flow_versions.version"],
        ondelete="RESTRICT",
    ),
    sa.Index("executions_crew_idx", "crew_id"),
    schema=TENANT,
)
# Newest first, overall and per flow / status (keyset pagination on created_at, id).
_newest = (executions.c.created_at.desc(), executions.c.id.desc())
sa.Index("executions_created_idx", *_newest)
sa.Index("executions_flow_created_idx", executions.c.flow_id, *_newest)
sa.Index("executions_status_created_idx", executions.c.status, *_newest)

node_runs = sa.Table(
    "node_runs",
    metadata,
    sa.Column(
        "execution_id", UUID, _tenant_fk("executions.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("output", JSONB),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _ts("started_at", nullable=True),
    _ts("finished_at", nullable=True),
    schema=TENANT,
)

execution_events = sa.Table(
    "execution_events",
    metadata,
    sa.Column(
        "execution_id", UUID, _tenant_fk("executions.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("sequence", sa.Integer, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("node_id", sa.Text),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("data", JSONB),
    schema=TENANT,
)

# One row per APPROVAL node a run reached: the request (prompt rendered with the run's
# data), then its one answer (`answered_at` set by a conditional update: first wins).
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column(
        "execution_id", UUID, _tenant_fk("executions.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("input_schema", JSONB),
    sa.Column("on_timeout", sa.Text, nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("approved", sa.Boolean),
    sa.Column("input", JSONB),
    sa.Column("comment", sa.Text),
    sa.Column("answered_by", sa.Text),
    sa.Column("answered_at", sa.DateTime(timezone=True)),
    sa.Column("timed_out", sa.Boolean, nullable=False, server_default=sa.false()),
    schema=TENANT,
)

# -- active executions (public) -----------------------------------------------
# One row per PENDING or RUNNING execution of any tenant, written in the same
# transaction as the tenant row and deleted when the execution ends. The sweeper
# finds expired leases and stale PENDING runs here with one indexed query, and the
# per-tenant concurrency limit counts RUNNING rows here. A WAITING execution (at
# APPROVAL nodes) keeps its row with status WAITING and no lease; there
# `lease_expires_at` is the earliest deadline of its unanswered approvals (NULL: none),
# which the sweeper's timeout scan reads.

active_executions = sa.Table(
    "active_executions",
    metadata,
    sa.Column("execution_id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column(
        "tenant_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("public.tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("tenant_schema", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("dispatched_at", sa.DateTime(timezone=True)),
    _ts("created_at"),
    sa.Index("active_executions_lease_idx", "status", "lease_expires_at"),
    sa.Index("active_executions_tenant_idx", "tenant_id", "status", "created_at"),
    schema="public",
)


# -- schedules and outgoing webhooks (tenant) -----------------------------------
# A schedule runs its flow at the times of a five-field cron expression in an IANA
# timezone; `next_run_at` is mirrored into public.schedule_due while the schedule is
# enabled, so one query finds the due schedules of every tenant.

schedules = sa.Table(
    "schedules",
    metadata,
    _id(),
    sa.Column("flow_id", UUID, _tenant_fk("flows.id", ondelete="CASCADE"), nullable=False),
    sa.Column("cron", sa.Text, nullable=False),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("inputs", JSONB, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("next_run_at", sa.DateTime(timezone=True)),
    sa.Column("last_execution_id", UUID, _tenant_fk("executions.id", ondelete="SET NULL")),
    sa.Column("created_by", sa.Text),
    _ts("created_at"),
    _ts("updated_at"),
    sa.Index("schedules_flow_idx", "flow_id"),
    schema=TENANT,
)

# Endpoints that hear about execution events; the signing secret is sealed like
# provider keys (server/crypto.py).
webhooks = sa.Table(
    "webhooks",
    metadata,
    _id(),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("events", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("secret_ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("secret_key_id", sa.Text, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    schema=TENANT,
)

# The outbox: one row per (webhook, execution event), written by the statement that
# stores the event (persistence/repositories/execution_events.py), so a delivery
# exists exactly when its event does. Pending rows are mirrored in public.webhook_outbox.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    _id(),
    sa.Column("webhook_id", UUID, _tenant_fk("webhooks.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "execution_id", UUID, _tenant_fk("executions.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("response_status", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    _ts("created_at"),
    _ts("delivered_at", nullable=True),
    sa.Index("webhook_deliveries_webhook_idx", "webhook_id", "created_at", "id"),
    sa.Index("webhook_deliveries_execution_idx", "execution_id"),
    # Each event once per run and webhook (EXECUTION_STARTED is stored again when a run
    # resumes elsewhere); a run may wait at several approvals.
    sa.Index(
        "webhook_deliveries_once_idx",
        "webhook_id",
        "execution_id",
        "event",
        unique=True,
        postgresql_where=sa.text("event <> 'EXECUTION_WAITING'"),
    ),
    schema=TENANT,
)


# -- due schedules and pending webhook deliveries (public) ------------------------
# Cross-tenant indexes like active_executions, written in the tenant row's transaction:
# the scheduler and the delivery loop of every process claim rows here with
# FOR UPDATE SKIP LOCKED.

schedule_due = sa.Table(
    "schedule_due",
    metadata,
    sa.Column("schedule_id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column(
        "tenant_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("public.tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("tenant_schema", sa.Text, nullable=False),
    sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("schedule_due_next_idx", "next_run_at"),
    schema="public",
)

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("delivery_id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column(
        "tenant_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("public.tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("tenant_schema", sa.Text, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("webhook_outbox_next_idx", "next_attempt_at"),
    schema="public",
)

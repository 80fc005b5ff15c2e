"""resources: LLM providers, tools, agents, crews, versioned flows

Revision ID: t0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "t0002"
down_revision = "t0001"
branch_labels = None
depends_on = None

S = "tenant"
UUID = sa.Uuid(as_uuid=False)
TS = sa.DateTime(timezone=True)


def _fk(target: str, ondelete: str = "RESTRICT") -> sa.ForeignKey:
    return sa.ForeignKey(f"{S}.{target}", ondelete=ondelete)


def _versioned() -> list[sa.Column[object]]:
    return [
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    ]


def upgrade() -> None:
    op.create_table(
        "llm_providers",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("base_url", sa.Text),
        sa.Column("api_key_ciphertext", sa.LargeBinary),
        sa.Column("api_key_key_id", sa.Text),
        *_versioned(),
        schema=S,
    )
    op.create_table(
        "tools",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("config", JSONB, nullable=False),
        sa.Column("input_schema", JSONB),
        *_versioned(),
        schema=S,
    )
    op.create_table(
        "agents",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("goal", sa.Text, nullable=False),
        sa.Column("backstory", sa.Text, nullable=False),
        sa.Column("llm_provider_id", UUID, _fk("llm_providers.id")),
        sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        *_versioned(),
        schema=S,
    )
    op.create_table(
        "agent_tools",
        sa.Column("agent_id", UUID, _fk("agents.id", "CASCADE"), primary_key=True),
        sa.Column("tool_id", UUID, _fk("tools.id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        schema=S,
    )
    op.create_table(
        "crews",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("process", sa.Text, nullable=False),
        sa.Column("manager_agent_id", UUID, _fk("agents.id")),
        sa.Column("manager_llm_provider_id", UUID, _fk("llm_providers.id")),
        sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        *_versioned(),
        schema=S,
    )
    op.create_table(
        "crew_agents",
        sa.Column("crew_id", UUID, _fk("crews.id", "CASCADE"), primary_key=True),
        sa.Column("agent_id", UUID, _fk("agents.id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        schema=S,
    )
    op.create_table(
        "crew_tasks",
        sa.Column("crew_id", UUID, _fk("crews.id", "CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("expected_output", sa.Text, nullable=False),
        sa.Column("agent_id", UUID, _fk("agents.id"), nullable=False),
        schema=S,
    )
    op.create_table(
        "flows",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("deleted_at", TS),
        *_versioned(),
        schema=S,
    )
    # Names are unique among live flows; a deleted flow frees its name.
    op.create_index(
        "flows_live_name_key",
        "flows",
        ["name"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "flow_versions",
        sa.Column("flow_id", UUID, _fk("flows.id", "CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("nodes", JSONB, nullable=False),
        sa.Column("edges", JSONB, nullable=False),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "flow_refs",
        sa.Column("flow_id", UUID, _fk("flows.id", "CASCADE"), nullable=False),
        sa.Column("agent_id", UUID, _fk("agents.id")),
        sa.Column("crew_id", UUID, _fk("crews.id")),
        sa.Column("tool_id", UUID, _fk("tools.id")),
        sa.Column("llm_provider_id", UUID, _fk("llm_providers.id")),
        schema=S,
    )
    op.create_index("flow_refs_flow_idx", "flow_refs", ["flow_id"], schema=S)
    for col in ("agent_id", "crew_id", "tool_id", "llm_provider_id"):
        op.create_index(f"flow_refs_{col}_idx", "flow_refs", [col], schema=S)
    for table, col in (
        ("agents", "llm_provider_id"),
        ("agent_tools", "tool_id"),
        ("crew_agents", "agent_id"),
        ("crew_tasks", "agent_id"),
    ):
        op.create_index(f"{table}_{col}_idx", table, [col], schema=S)


def downgrade() -> None:
    for name in (
        "flow_refs",
        "flow_versions",
        "flows",
        "crew_tasks",
        "crew_agents",
        "crews",
        "agent_tools",
        "agents",
        "tools",
        "llm_providers",
    ):
        op.drop_table(name, schema=S)

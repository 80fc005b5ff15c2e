"""LLM runtime: provider fallbacks, timeouts and retries; usage per LLM call

Revision ID: t0004
"""

import sqlalchemy as sa
from alembic import op

revision = "t0004"
down_revision = "t0003"
branch_labels = None
depends_on = None

S = "tenant"
UUID = sa.Uuid(as_uuid=False)
TS = sa.DateTime(timezone=True)


def _real_schema() -> str:
    """ALTER TABLE is not rewritten by `schema_translate_map` (CREATE TABLE/INDEX are), so
    column changes name the tenant's schema itself."""
    options = op.get_bind().get_execution_options()
    return str((options.get("schema_translate_map") or {}).get(S, S))


def upgrade() -> None:
    real = _real_schema()
    op.add_column(
        "llm_providers",
        sa.Column("timeout_seconds", sa.Float, nullable=False, server_default="60"),
        schema=real,
    )
    op.add_column(
        "llm_providers",
        sa.Column("max_retries", sa.Integer, nullable=False, server_default="1"),
        schema=real,
    )
    # Ordered fallbacks; RESTRICT: a provider used as a fallback cannot be deleted.
    op.create_table(
        "llm_provider_fallbacks",
        sa.Column(
            "provider_id",
            UUID,
            sa.ForeignKey(f"{S}.llm_providers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "fallback_id",
            UUID,
            sa.ForeignKey(f"{S}.llm_providers.id", ondelete="RESTRICT"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        schema=S,
    )
    op.create_index(
        "llm_provider_fallbacks_fallback_idx", "llm_provider_fallbacks", ["fallback_id"], schema=S
    )
    # One row per request to a provider. No foreign keys: usage outlives providers and
    # is written even while the execution it belongs to is being cancelled.
    op.create_table(
        "llm_usage",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("provider_id", UUID, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("execution_id", UUID),
        sa.Column("node_id", sa.Text),
        sa.Column("chat_session_id", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("llm_usage_execution_idx", "llm_usage", ["execution_id", "node_id"], schema=S)
    op.create_index("llm_usage_created_idx", "llm_usage", ["created_at"], schema=S)


def downgrade() -> None:
    op.drop_table("llm_usage", schema=S)
    op.drop_table("llm_provider_fallbacks", schema=S)
    op.drop_column("llm_providers", "max_retries", schema=_real_schema())
    op.drop_column("llm_providers", "timeout_seconds", schema=_real_schema())

"""chat sessions

Revision ID: t0005
"""

import sqlalchemy as sa
from alembic import op

revision = "t0005"
down_revision = "t0004"
branch_labels = None
depends_on = None

S = "tenant"
UUID = sa.Uuid(as_uuid=False)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Messages live in MongoDB; the session row keeps the counter and the reply lock.
    op.create_table(
        "chat_sessions",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("title", sa.Text),
        sa.Column(
            "llm_provider_id", UUID, sa.ForeignKey(f"{S}.llm_providers.id", ondelete="SET NULL")
        ),
        sa.Column("agent_id", UUID, sa.ForeignKey(f"{S}.agents.id", ondelete="SET NULL")),
        sa.Column("system_prompt", sa.Text),
        sa.Column("message_limit", sa.Integer, nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reply_id", UUID),
        sa.Column("reply_owner", sa.Text),
        sa.Column("reply_expires_at", TS),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "llm_provider_id IS NULL OR agent_id IS NULL", name="chat_sessions_one_target"
        ),
        schema=S,
    )
    op.create_index("chat_sessions_created_idx", "chat_sessions", ["created_at", "id"], schema=S)
    op.create_index(
        "chat_sessions_llm_provider_idx", "chat_sessions", ["llm_provider_id"], schema=S
    )
    op.create_index("chat_sessions_agent_idx", "chat_sessions", ["agent_id"], schema=S)


def downgrade() -> None:
    op.drop_table("chat_sessions", schema=S)

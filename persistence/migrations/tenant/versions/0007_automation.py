"""schedules, webhooks and the webhook outbox

Revision ID: t0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "t0007"
down_revision = "t0006"
branch_labels = None
depends_on = None

S = "tenant"
UUID = sa.Uuid(as_uuid=False)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", UUID, primary_key=True),
        sa.Column(
            "flow_id", UUID, sa.ForeignKey(f"{S}.flows.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("cron", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("inputs", JSONB, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("next_run_at", TS),
        sa.Column(
            "last_execution_id", UUID, sa.ForeignKey(f"{S}.executions.id", ondelete="SET NULL")
        ),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("schedules_flow_idx", "schedules", ["flow_id"], schema=S)
    op.create_table(
        "webhooks",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", sa.ARRAY(sa.Text), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("secret_ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("secret_key_id", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", UUID, primary_key=True),
        sa.Column(
            "webhook_id",
            UUID,
            sa.ForeignKey(f"{S}.webhooks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "execution_id",
            UUID,
            sa.ForeignKey(f"{S}.executions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("response_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("next_attempt_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("delivered_at", TS),
        schema=S,
    )
    op.create_index(
        "webhook_deliveries_webhook_idx",
        "webhook_deliveries",
        ["webhook_id", "created_at", "id"],
        schema=S,
    )
    op.create_index(
        "webhook_deliveries_execution_idx", "webhook_deliveries", ["execution_id"], schema=S
    )
    op.create_index(
        "webhook_deliveries_once_idx",
        "webhook_deliveries",
        ["webhook_id", "execution_id", "event"],
        unique=True,
        postgresql_where=sa.text("event <> 'EXECUTION_WAITING'"),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries", schema=S)
    op.drop_table("webhooks", schema=S)
    op.drop_table("schedules", schema=S)

"""tenant status and quotas

Revision ID: p0003
"""

import sqlalchemy as sa
from alembic import op

revision = "p0003"
down_revision = "p0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _upgrade_automation_indexes()


def downgrade() -> None:
    _downgrade_automation_indexes()


# -- automation: due schedules and pending webhook deliveries of every tenant ----------
# Mirrors of tenant rows, written in their transaction, so the scheduler and the webhook
# delivery loop find work across tenants with one indexed query.

_UUID = sa.Uuid(as_uuid=False)
_TS = sa.DateTime(timezone=True)


def _tenant_id() -> sa.Column[str]:
    return sa.Column(
        "tenant_id", _UUID, sa.ForeignKey("public.tenants.id", ondelete="CASCADE"), nullable=False
    )


def _upgrade_automation_indexes() -> None:
    op.create_table(
        "schedule_due",
        sa.Column("schedule_id", _UUID, primary_key=True),
        _tenant_id(),
        sa.Column("tenant_schema", sa.Text, nullable=False),
        sa.Column("next_run_at", _TS, nullable=False),
        schema="public",
    )
    op.create_index("schedule_due_next_idx", "schedule_due", ["next_run_at"], schema="public")
    op.create_table(
        "webhook_outbox",
        sa.Column("delivery_id", _UUID, primary_key=True),
        _tenant_id(),
        sa.Column("tenant_schema", sa.Text, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        schema="public",
    )
    op.create_index(
        "webhook_outbox_next_idx", "webhook_outbox", ["next_attempt_at"], schema="public"
    )


def _downgrade_automation_indexes() -> None:
    op.drop_table("webhook_outbox", schema="public")
    op.drop_table("schedule_due", schema="public")

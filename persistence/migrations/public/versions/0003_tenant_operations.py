"""tenant status and quotas; schedule and webhook indexes; the SQL audit table goes (MongoDB holds the audit log)

Revision ID: p0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "p0003"
down_revision = "p0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _upgrade_automation_indexes()
    _upgrade_tenant_status()
    _drop_sql_audit()


def downgrade() -> None:
    _restore_sql_audit()
    _downgrade_tenant_status()
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


# -- tenant operations: status (active/suspended) and per-tenant quota overrides --------
# Quota columns are nullable: NULL means "use the default from settings".


def _upgrade_tenant_status() -> None:
    op.add_column(
        "tenants",
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'ACTIVE'")),
        schema="public",
    )
    op.add_column("tenants", sa.Column("suspended_reason", sa.Text, nullable=True), schema="public")
    op.add_column("tenants", sa.Column("suspended_at", _TS, nullable=True), schema="public")
    op.add_column(
        "tenants",
        sa.Column("quota", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema="public",
    )
    op.create_check_constraint(
        "tenants_status_check", "tenants", "status IN ('ACTIVE', 'SUSPENDED')", schema="public"
    )


def _downgrade_tenant_status() -> None:
    op.drop_constraint("tenants_status_check", "tenants", schema="public")
    for column in ("quota", "suspended_at", "suspended_reason", "status"):
        op.drop_column("tenants", column, schema="public")


# -- the audit trail moved to MongoDB (persistence/audit.py) --------------------------------


def _drop_sql_audit() -> None:
    op.drop_table("audit_entries", schema="public")


def _restore_sql_audit() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", _UUID, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="public",
    )
    op.create_index(
        "audit_entries_tenant_idx", "audit_entries", ["tenant_id", "at"], schema="public"
    )

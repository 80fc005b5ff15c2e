"""active executions: one row per PENDING / RUNNING execution of any tenant

The sweeper finds expired leases and stale PENDING executions across tenants with
one indexed query here; the per-tenant concurrency limit counts RUNNING rows.

Revision ID: p0002
"""

import sqlalchemy as sa
from alembic import op

revision = "p0002"
down_revision = "p0001"
branch_labels = None
depends_on = None

UUID = sa.Uuid(as_uuid=False)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "active_executions",
        sa.Column("execution_id", UUID, primary_key=True),
        sa.Column(
            "tenant_id",
            UUID,
            sa.ForeignKey("public.tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tenant_schema", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("lease_expires_at", TS),
        sa.Column("dispatched_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        schema="public",
    )
    op.create_index(
        "active_executions_lease_idx",
        "active_executions",
        ["status", "lease_expires_at"],
        schema="public",
    )
    op.create_index(
        "active_executions_tenant_idx",
        "active_executions",
        ["tenant_id", "status", "created_at"],
        schema="public",
    )


def downgrade() -> None:
    op.drop_table("active_executions", schema="public")

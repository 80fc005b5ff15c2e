"""executions: runs of flows and crews, node runs (checkpoints), the event log

Revision ID: t0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "t0003"
down_revision = "t0002"
branch_labels = None
depends_on = None

S = "tenant"
UUID = sa.Uuid(as_uuid=False)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("flow_id", UUID),
        sa.Column("flow_version", sa.Integer),
        sa.Column("crew_id", UUID, sa.ForeignKey(f"{S}.crews.id", ondelete="SET NULL")),
        sa.Column("graph", JSONB),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("inputs", JSONB, nullable=False),
        sa.Column("outputs", JSONB),
        sa.Column("error", sa.Text),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", TS),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_sequence", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.ForeignKeyConstraint(
            ["flow_id", "flow_version"],
            [f"{S}.flow_versions.flow_id", f"{S}.flow_versions.version"],
            ondelete="RESTRICT",
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')",
            name="executions_status_check",
        ),
        schema=S,
    )
    # Newest first, overall and per flow / status (keyset pagination on created_at, id).
    op.create_index(
        "executions_created_idx",
        "executions",
        [sa.text("created_at DESC"), sa.text("id DESC")],
        schema=S,
    )
    op.create_index(
        "executions_flow_created_idx",
        "executions",
        ["flow_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=S,
    )
    op.create_index(
        "executions_status_created_idx",
        "executions",
        ["status", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=S,
    )
    op.create_index("executions_crew_idx", "executions", ["crew_id"], schema=S)
    op.create_table(
        "node_runs",
        sa.Column(
            "execution_id",
            UUID,
            sa.ForeignKey(f"{S}.executions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("output", JSONB),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        schema=S,
    )
    op.create_table(
        "execution_events",
        sa.Column(
            "execution_id",
            UUID,
            sa.ForeignKey(f"{S}.executions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.Integer, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("node_id", sa.Text),
        sa.Column("at", TS, nullable=False),
        sa.Column("data", JSONB),
        schema=S,
    )


def downgrade() -> None:
    for name in ("execution_events", "node_runs", "executions"):
        op.drop_table(name, schema=S)

"""approval nodes: waiting runs and their answers

Revision ID: t0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "t0006"
down_revision = "t0005"
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
    op.drop_constraint("executions_status_check", "executions", schema=real, type_="check")
    op.create_check_constraint(
        "executions_status_check",
        "executions",
        "status IN ('PENDING', 'RUNNING', 'WAITING', 'COMPLETED', 'FAILED', 'CANCELLED')",
        schema=real,
    )
    # A run waiting at approvals: since when (the flow timeout does not count it), how
    # long it waited before, and whether its next claim is the resume after an answer.
    op.add_column("executions", sa.Column("waiting_since", TS), schema=real)
    op.add_column(
        "executions",
        sa.Column("waited_seconds", sa.Float, nullable=False, server_default="0"),
        schema=real,
    )
    op.add_column(
        "executions",
        sa.Column("resume_pending", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=real,
    )
    # One row per APPROVAL node reached by a run: the request, then its one answer.
    op.create_table(
        "approvals",
        sa.Column(
            "execution_id",
            UUID,
            sa.ForeignKey(f"{S}.executions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node_id", sa.Text, primary_key=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("input_schema", JSONB),
        sa.Column("on_timeout", sa.Text, nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("approved", sa.Boolean),
        sa.Column("input", JSONB),
        sa.Column("comment", sa.Text),
        sa.Column("answered_by", sa.Text),
        sa.Column("answered_at", TS),
        sa.Column("timed_out", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=S,
    )


def downgrade() -> None:
    real = _real_schema()
    op.drop_table("approvals", schema=S)
    op.drop_column("executions", "resume_pending", schema=real)
    op.drop_column("executions", "waited_seconds", schema=real)
    op.drop_column("executions", "waiting_since", schema=real)
    op.drop_constraint("executions_status_check", "executions", schema=real, type_="check")
    op.create_check_constraint(
        "executions_status_check",
        "executions",
        "status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')",
        schema=real,
    )

"""tenant schema base: settings of the tenant

Revision ID: t0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "t0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Key/value settings of the tenant (limits, network allowance for tools, ...).
    op.create_table(
        "settings",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", JSONB, nullable=False),
        schema="tenant",
    )


def downgrade() -> None:
    op.drop_table("settings", schema="tenant")

"""spare tenant schemas: schemas created ahead of registrations, at a recorded head

A registration claims one (row lock, SKIP LOCKED), renames it to the tenant's schema
and deletes its row, all in its own transaction (persistence/spare_schemas.py).

Revision ID: p0004
"""

import sqlalchemy as sa
from alembic import op

revision = "p0004"
down_revision = "p0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spare_tenant_schemas",
        sa.Column("schema_name", sa.Text, primary_key=True),
        sa.Column("heads", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="public",
    )
    op.create_index(
        "spare_tenant_schemas_heads_idx",
        "spare_tenant_schemas",
        ["heads", "created_at"],
        schema="public",
    )


def downgrade() -> None:
    op.execute(
        "DO $$ DECLARE s text; BEGIN "
        "FOR s IN SELECT schema_name FROM public.spare_tenant_schemas LOOP "
        "EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s); END LOOP; END $$"
    )
    op.drop_table("spare_tenant_schemas", schema="public")

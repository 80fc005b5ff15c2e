"""identity: tenants, users, refresh tokens, API keys, audit entries

Revision ID: p0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "p0001"
down_revision = None
branch_labels = None
depends_on = None

UUID = sa.Uuid(as_uuid=False)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("slug", sa.Text, nullable=False, unique=True),
        sa.Column("schema_name", sa.Text, nullable=False, unique=True),
        sa.Column("settings", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        schema="public",
    )
    op.create_table(
        "users",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("tenant_id", UUID, sa.ForeignKey("public.tenants.id"), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("tenant_id", "email", name="users_tenant_email_key"),
        schema="public",
    )
    op.create_index("users_email_idx", "users", ["email"], schema="public")
    op.create_table(
        "refresh_tokens",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("user_id", UUID, sa.ForeignKey("public.users.id"), nullable=False),
        sa.Column("family_id", UUID, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("revoked_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        schema="public",
    )
    op.create_index("refresh_tokens_family_idx", "refresh_tokens", ["family_id"], schema="public")
    op.create_index("refresh_tokens_user_idx", "refresh_tokens", ["user_id"], schema="public")
    op.create_table(
        "api_keys",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("tenant_id", UUID, sa.ForeignKey("public.tenants.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", TS),
        schema="public",
    )
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("at", TS, nullable=False, server_default=sa.func.now()),
        schema="public",
    )
    op.create_index(
        "audit_entries_tenant_idx", "audit_entries", ["tenant_id", "at"], schema="public"
    )


def downgrade() -> None:
    for name in ("audit_entries", "api_keys", "refresh_tokens", "users", "tenants"):
        op.drop_table(name, schema="public")

"""Table definitions. `public` holds identity; tenant tables use the placeholder
schema `tenant`, which each session maps to the caller's schema via
`schema_translate_map`."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

TENANT = "tenant"  # placeholder translated per session
metadata = sa.MetaData()


def _id() -> sa.Column[str]:
    return sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else sa.func.now(),
    )


# -- public ---------------------------------------------------------------

tenants = sa.Table(
    "tenants",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("slug", sa.Text, nullable=False, unique=True),
    sa.Column("schema_name", sa.Text, nullable=False, unique=True),
    sa.Column("settings", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    _ts("created_at"),
    schema="public",
)

users = sa.Table(
    "users",
    metadata,
    _id(),
    sa.Column(
        "tenant_id", sa.Uuid(as_uuid=False), sa.ForeignKey("public.tenants.id"), nullable=False
    ),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    _ts("created_at"),
    sa.UniqueConstraint("tenant_id", "email", name="users_tenant_email_key"),
    schema="public",
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    _id(),
    sa.Column("tenant_id", sa.Uuid(as_uuid=False), nullable=False),
    sa.Column("user_id", sa.Uuid(as_uuid=False), sa.ForeignKey("public.users.id"), nullable=False),
    sa.Column("family_id", sa.Uuid(as_uuid=False), nullable=False, index=True),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    _ts("used_at", nullable=True),
    _ts("revoked_at", nullable=True),
    _ts("created_at"),
    schema="public",
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    _id(),
    sa.Column(
        "tenant_id", sa.Uuid(as_uuid=False), sa.ForeignKey("public.tenants.id"), nullable=False
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    _ts("created_at"),
    _ts("revoked_at", nullable=True),
    schema="public",
)

audit_entries = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("tenant_id", sa.Uuid(as_uuid=False), nullable=False, index=True),
    sa.Column("actor", sa.Text),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text),
    _ts("at"),
    schema="public",
)

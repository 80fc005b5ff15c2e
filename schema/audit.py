"""AuditEntry: one line of the team's audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from domain import audit as d
from domain.rbac import Action
from schema.permissions import RequiresAction


@strawberry.type
class AuditEntry:
    id: strawberry.ID
    at: datetime
    actor: str | None = strawberry.field(
        description="The user's email or the API key's name; null for the system."
    )
    action: str = strawberry.field(
        description='What happened, e.g. "auth.login_failed", "user.role_changed", '
        '"apikey.created", "provider.updated".'
    )
    target: str | None = strawberry.field(description="The id (or name) acted upon.")
    ip: str | None = strawberry.field(description="The client address of the request.")
    request_id: str | None = strawberry.field(
        description="The request's X-Request-Id, as in the server logs."
    )
    data: JSON | None = strawberry.field(description="A few facts about the change.")

    @classmethod
    def from_domain(cls, e: d.AuditEntry) -> AuditEntry:
        return cls(
            id=strawberry.ID(e.id),
            at=e.at,
            actor=e.actor,
            action=e.action,
            target=e.target,
            ip=e.ip,
            request_id=e.request_id,
            data=cast(Any, dict(e.data)) if e.data else None,
        )


class CanReadAuditLog(RequiresAction):
    action = Action.READ_AUDIT_LOG

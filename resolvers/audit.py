"""The audit log query."""

from __future__ import annotations

from domain.validation import page_size
from schema.audit import AuditEntry
from schema.context import Info
from schema.relay import Connection, connection


async def audit_log(
    info: Info, first: int | None = None, after: str | None = None, action: str | None = None
) -> Connection[AuditEntry]:
    principal = await info.context.principal()
    page = await info.context.services.audit.entries(
        principal, page_size(first, info.context.settings.page_size_max), after, action
    )
    return connection(page, AuditEntry.from_domain)

"""The TenantQuota type (domain/quotas.py): 0 internally is "no limit", null here."""

from __future__ import annotations

import strawberry

from domain.quotas import NO_LIMIT
from domain.tenants import TenantQuota as DomainQuota


def _limit(value: int) -> int | None:
    return None if value == NO_LIMIT else value


@strawberry.type(
    description="The team's quotas (defaults from the server's settings, set per team by "
    "the operator). Null: no limit. Days are UTC days."
)
class TenantQuota:
    max_concurrent_executions: int = strawberry.field(
        description="RUNNING executions at once; more wait as PENDING and start as runs end."
    )
    max_executions_per_day: int | None = strawberry.field(
        description="Executions started per UTC day (executeFlow, testCrew, schedules)."
    )
    max_tokens_per_day: int | None = strawberry.field(
        description="LLM tokens (prompt + completion) per UTC day, from the recorded usage."
    )
    max_chat_sessions: int | None = strawberry.field(
        description="Chat sessions existing at once; deleting one frees a slot."
    )

    @classmethod
    def from_domain(cls, q: DomainQuota) -> TenantQuota:
        return cls(
            max_concurrent_executions=q.max_concurrent_executions,
            max_executions_per_day=_limit(q.max_executions_per_day),
            max_tokens_per_day=_limit(q.max_tokens_per_day),
            max_chat_sessions=_limit(q.max_chat_sessions),
        )

"""The audit log: who did what to which resource of a tenant, from where.

Use cases record entries through `AuditRecorder.record`, which never waits and never
fails: the adapter buffers entries and writes them in the background (retrying while its
store is down), so an audit write can neither slow down nor break the request that caused
it. Admins read the log newest first (`AuditService.entries`), always of their own tenant.

Where a request came from (client address, request id) is set once per request by the
server (`bind_origin`) and picked up here, so use cases need not pass it along.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from domain.errors import DomainError
from domain.identity import Principal
from domain.ports import Page
from domain.rbac import Action

log = logging.getLogger("crewgraph.audit")

# -- action names -------------------------------------------------------------------
TENANT_REGISTERED = "tenant.registered"
LOGIN = "auth.login"
LOGIN_FAILED = "auth.login_failed"
REFRESH_TOKEN_REUSED = "auth.refresh_token_reused"
USER_CREATED = "user.created"
USER_ROLE_CHANGED = "user.role_changed"
USER_DEACTIVATED = "user.deactivated"
APIKEY_CREATED = "apikey.created"
APIKEY_REVOKED = "apikey.revoked"
PROVIDER_CREATED = "provider.created"
PROVIDER_UPDATED = "provider.updated"
PROVIDER_DELETED = "provider.deleted"
TOOL_CREATED = "tool.created"
TOOL_UPDATED = "tool.updated"
TOOL_DELETED = "tool.deleted"
FLOW_DELETED = "flow.deleted"
TENANT_SUSPENDED = "tenant.suspended"
TENANT_ACTIVATED = "tenant.activated"
TENANT_QUOTA_CHANGED = "tenant.quota_changed"
APPROVAL_ANSWERED = "approval.answered"

MAX_ACTION_LENGTH = 64
# An entry's `data` stays small: a few scalar facts (names, roles), never inputs or keys.
MAX_DATA_KEYS = 20
MAX_TEXT_LENGTH = 256


class AuditUnavailable(DomainError):
    """The audit store did not answer (reads only: writes wait in the buffer)."""

    code = "SERVICE_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the current request came from."""

    ip: str | None = None
    request_id: str | None = None


_NO_ORIGIN = Origin()
_origin: ContextVar[Origin | None] = ContextVar("crewgraph_audit_origin", default=None)


def bind_origin(ip: str | None, request_id: str | None) -> None:
    """Set by the server for the rest of the current request (task and its children)."""
    _origin.set(Origin(ip or None, request_id or None))


def current_origin() -> Origin:
    return _origin.get() or _NO_ORIGIN


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    tenant_id: str
    at: datetime
    action: str
    actor: str | None = None  # user email or API key name; None for the system
    target: str | None = None
    ip: str | None = None
    request_id: str | None = None
    data: Mapping[str, object] = field(default_factory=dict)


class AuditSink(Protocol):
    """Takes entries for writing later; returns at once and never raises."""

    def put(self, entry: AuditEntry) -> None: ...


class AuditStore(Protocol):
    async def page(
        self, tenant_id: str, first: int, after: str | None, action: str | None
    ) -> Page[AuditEntry]:
        """The tenant's entries newest first, after the cursor `after`; BAD_USER_INPUT on
        a malformed cursor."""
        ...


class AuditRecorder(Protocol):
    """What use cases (and operator commands) call to record an entry."""

    def record(
        self,
        tenant_id: str,
        action: str,
        *,
        principal: Principal | None = None,
        actor: str | None = None,
        target: str | None = None,
        data: Mapping[str, object] | None = None,
    ) -> None: ...


class NoAudit:
    """Records nothing: the default of use cases built without an audit log."""

    def record(
        self,
        tenant_id: str,
        action: str,
        *,
        principal: Principal | None = None,
        actor: str | None = None,
        target: str | None = None,
        data: Mapping[str, object] | None = None,
    ) -> None:
        return None


NO_AUDIT = NoAudit()


def actor_of(principal: Principal | None) -> str | None:
    """A principal as the log shows it: the user's email or the API key's name."""
    if principal is None:
        return None
    if principal.actor_name:
        return principal.actor_name
    if principal.user_id:
        return f"user:{principal.user_id}"
    if principal.api_key_id:
        return f"apikey:{principal.api_key_id}"
    return None


def _text(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_TEXT_LENGTH else text[: MAX_TEXT_LENGTH - 1] + "…"


def small_data(data: Mapping[str, object] | None) -> dict[str, object]:
    """At most MAX_DATA_KEYS scalar values (bounded strings; other values as text)."""
    out: dict[str, object] = {}
    for key, value in list((data or {}).items())[:MAX_DATA_KEYS]:
        # Integers past 64 bits are kept as text: the store cannot hold them as numbers.
        if (
            value is None
            or isinstance(value, bool | float)
            or (isinstance(value, int) and -(2**63) <= value < 2**63)
        ):
            out[_text(key)] = value
        else:
            out[_text(key)] = _text(value)
    return out


def _now() -> datetime:
    return datetime.now(UTC)


_sequence = itertools.count()


def entry_id(at: datetime) -> str:
    """Sorts like `at` and, within one millisecond of one process, like recording order:
    the log's order among entries of the same instant."""
    millis = int(at.timestamp() * 1000)
    return f"{millis:012x}{next(_sequence) % 0x1000000:06x}{secrets.token_hex(5)}"


@dataclass
class AuditService:
    """Records entries (`AuditRecorder`) and reads them back for admins."""

    sink: AuditSink
    store: AuditStore
    clock: Callable[[], datetime] = _now

    def record(
        self,
        tenant_id: str,
        action: str,
        *,
        principal: Principal | None = None,
        actor: str | None = None,
        target: str | None = None,
        data: Mapping[str, object] | None = None,
    ) -> None:
        try:
            origin = current_origin()
            now = self.clock()
            # Stores keep milliseconds; cursors compare what was stored.
            at = now.replace(microsecond=now.microsecond // 1000 * 1000)
            entry = AuditEntry(
                id=entry_id(at),
                tenant_id=tenant_id,
                at=at,
                action=action[:MAX_ACTION_LENGTH],
                actor=_text(actor) if actor else actor_of(principal),
                target=_text(target) if target else None,
                ip=origin.ip,
                request_id=origin.request_id,
                data=small_data(data),
            )
            self.sink.put(entry)
        except Exception:  # an audit problem never fails the request that caused it
            log.exception("audit entry not recorded", extra={"action": action})

    async def entries(
        self, principal: Principal, first: int, after: str | None, action: str | None = None
    ) -> Page[AuditEntry]:
        """The caller's tenant's log, newest first (admins only)."""
        principal.require(Action.READ_AUDIT_LOG)
        wanted = action.strip() if action else None
        return await self.store.page(
            principal.tenant_id, first, after, wanted[:MAX_ACTION_LENGTH] if wanted else None
        )


class _Discard:
    """Neither keeps nor returns anything: the audit log of a deployment without one."""

    def put(self, entry: AuditEntry) -> None:
        return None

    async def page(
        self, tenant_id: str, first: int, after: str | None, action: str | None
    ) -> Page[AuditEntry]:
        return Page(items=[], has_next_page=False)


def disabled_audit() -> AuditService:
    return AuditService(_Discard(), _Discard())

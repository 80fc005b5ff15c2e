"""Pieces shared by every tenant resource: versions, names, ids, references."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import ClassVar, Generic, Protocol, TypeVar

from domain.audit import NO_AUDIT, AuditRecorder
from domain.auth import is_uuid
from domain.errors import Conflict, NotFound
from domain.identity import Principal
from domain.ports import Page, ResourceRepository, TenantUnitOfWork, TenantUnitOfWorkFactory
from domain.rbac import Action


class Resource(Protocol):
    """What the shared writes read and stamp on every tenant resource."""

    id: str
    name: str
    version: int
    updated_at: datetime


E = TypeVar("E", bound=Resource)
# Checks references (and applies an update) inside the write's transaction.
RefCheck = Callable[[TenantUnitOfWork], Awaitable[None]]


def require_id(kind: str, ident: str) -> str:
    if not is_uuid(ident):
        raise NotFound(kind, ident)
    return ident


def check_version(kind: str, current: int, expected: int | None) -> None:
    if expected is not None and expected != current:
        raise Conflict(
            f"{kind} was changed meanwhile: expected version {expected}, current is {current}",
            extensions={"currentVersion": current, "expectedVersion": expected},
        )


def duplicate_name(kind: str, name: str) -> Conflict:
    return Conflict(
        f"a {kind} named {name!r} already exists",
        extensions={"fields": {"name": "is already taken"}},
    )


def still_referenced(kind: str, ident: str, referrers: Sequence[str]) -> Conflict:
    shown = ", ".join(referrers[:10]) + (" …" if len(referrers) > 10 else "")
    return Conflict(
        f"{kind} {ident} is still used by {shown}; remove those references first",
        extensions={"referrers": list(referrers)},
    )


def missing_references(kind: str, wanted: Sequence[str], found: set[str]) -> list[str]:
    return [i for i in wanted if i not in found or not is_uuid(i)]


def not_found_refs(kind: str, field: str, missing: Sequence[str]) -> NotFound:
    err = NotFound(kind, ", ".join(missing))
    err.extensions["fields"] = {field: f"{kind} not found: {', '.join(missing)}"}
    return err


class ResourceService(Generic[E]):
    """Reads, deletes and the steps of a write shared by every tenant resource;
    validation and what a write changes stay per resource."""

    kind: ClassVar[str]  # for messages: "agent"
    repo_attr: ClassVar[str]  # unit-of-work attribute: "agents"
    write_action: ClassVar[Action] = Action.WRITE
    # Audit-log actions recorded after a successful create / update / delete; None: none.
    audit_created: ClassVar[str | None] = None
    audit_updated: ClassVar[str | None] = None
    audit_deleted: ClassVar[str | None] = None

    def __init__(self, uow: TenantUnitOfWorkFactory, audit: AuditRecorder = NO_AUDIT) -> None:
        self._uow = uow
        self._audit = audit

    def _audited(self, p: Principal, action: str | None, entity: E) -> None:
        if action is not None:
            self._audit.record(
                p.tenant_id,
                action,
                principal=p,
                target=entity.id,
                data={"name": entity.name, "version": entity.version},
            )

    def _repo(self, uow: TenantUnitOfWork) -> ResourceRepository[E]:
        repo: ResourceRepository[E] = getattr(uow, self.repo_attr)
        return repo

    async def get(self, p: Principal, ident: str) -> E:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            found = await self._repo(uow).get(require_id(self.kind, ident))
        if found is None:
            raise NotFound(self.kind, ident)
        return found

    async def get_many(self, p: Principal, ids: Sequence[str]) -> dict[str, E]:
        """For DataLoaders: what exists in the caller's tenant, by id."""
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            return await self._repo(uow).get_many(ids)

    async def _list(
        self, p: Principal, first: int, after: str | None, **filters: object
    ) -> Page[E]:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            return await self._repo(uow).page(first, after, **filters)

    async def _stored(self, uow: TenantUnitOfWork, p: Principal, entity: E) -> None:
        """Runs after every add and update, in the same transaction."""

    async def _insert(self, p: Principal, entity: E, check_refs: RefCheck | None = None) -> E:
        """Store a new, validated `entity` whose name must be free. The caller checked
        the permission before validating, so a reader is FORBIDDEN whatever it sends."""
        async with self._uow(p.tenant_schema) as uow:
            if check_refs is not None:
                await check_refs(uow)
            repo = self._repo(uow)
            if await repo.name_taken(entity.name):
                raise duplicate_name(self.kind, entity.name)
            await repo.add(entity)
            await self._stored(uow, p, entity)
            await uow.commit()
        self._audited(p, self.audit_created, entity)
        return entity

    async def _modify(
        self,
        p: Principal,
        ident: str,
        expected_version: int | None,
        change: Callable[[TenantUnitOfWork, E], Awaitable[None]],
    ) -> E:
        """Lock the current version, let `change` check references and apply the
        update, then store it as the next version (permission checked by the caller)."""
        async with self._uow(p.tenant_schema) as uow:
            repo = self._repo(uow)
            current = await repo.get(require_id(self.kind, ident), for_update=True)
            if current is None:
                raise NotFound(self.kind, ident)
            check_version(self.kind, current.version, expected_version)
            await change(uow, current)
            if await repo.name_taken(current.name, exclude=ident):
                raise duplicate_name(self.kind, current.name)
            current.version += 1
            current.updated_at = datetime.now(UTC)
            await repo.update(current)
            await self._stored(uow, p, current)
            await uow.commit()
        self._audited(p, self.audit_updated, current)
        return current

    async def delete(self, p: Principal, ident: str) -> bool:
        p.require(self.write_action)
        async with self._uow(p.tenant_schema) as uow:
            repo = self._repo(uow)
            current = await repo.get(require_id(self.kind, ident), for_update=True)
            if current is None:
                raise NotFound(self.kind, ident)
            referrers = await repo.referrers(ident)
            if referrers:
                raise still_referenced(self.kind, current.name, referrers)
            await repo.delete(ident)
            await uow.commit()
        self._audited(p, self.audit_deleted, current)
        return True

"""Schedules: run a flow at the times of a five-field cron expression in an IANA timezone.

- Written by members, read by viewers. The cron expression and timezone are checked with
  `croniter` and `zoneinfo`; the inputs are checked against the flow's INPUT schemas when
  the schedule is written (as `executeFlow` checks them), so a schedule that cannot run is
  refused then, not discovered at 3 a.m.
- `next_run_at` is the next time after now (null while disabled). It is mirrored in a
  cross-tenant index (`ScheduleIndex`) in the same transaction, so the scheduler loop of
  every API and worker process finds the due schedules of all tenants with one query.
- Firing: each due schedule is claimed with a row lock that other processes skip
  (`claim_due`), its run is stored through `ExecutionService.add_flow_execution` and
  `next_run_at` moves on in that same transaction, so a due time fires exactly once
  however many processes scan. `next_run_at` is computed from *now*, so times missed
  while everything was down fire once on restart, not once per missed tick.
- A run that cannot start (the flow changed and no longer validates, inputs no longer
  match, too many active executions) is skipped for that time and logged.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]

from domain.errors import BadUserInput, DomainError, LimitExceeded, NotFound
from domain.executions.builtins import validate_inputs
from domain.executions.records import Execution
from domain.executions.service import ExecutionService
from domain.flows.model import NodeKind
from domain.flows.service import Flow
from domain.identity import Principal
from domain.ports import Page, UnitOfWork
from domain.rbac import Action, Role
from domain.resources import require_id
from domain.validation import Checker

log = logging.getLogger("crewgraph.schedules")

MAX_CRON = 200
MAX_TIMEZONE = 64
DEFAULT_MAX_SCHEDULES = 200  # per tenant
DEFAULT_TIMEZONE = "UTC"


@dataclass(slots=True)
class Schedule:
    id: str
    flow_id: str
    cron: str
    timezone: str
    inputs: dict[str, Any]
    enabled: bool
    next_run_at: datetime | None
    last_execution_id: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduleInput:
    """On update, None keeps the stored timezone, inputs and enabled flag."""

    flow_id: str
    cron: str
    timezone: str | None = None
    inputs: Any = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class DueSchedule:
    schedule_id: str
    tenant_id: str
    tenant_schema: str


class ScheduleRepository(Protocol):
    """Schedules of one tenant; every write keeps the cross-tenant due index in step."""

    async def get(self, ident: str, *, for_update: bool = False) -> Schedule | None: ...
    async def page(self, first: int, after: str | None, flow_id: str | None) -> Page[Schedule]: ...
    async def lock_and_count(self) -> int:
        """How many schedules the tenant has, holding its schedule lock until the unit of
        work ends: concurrent creates queue up, so the limit check and insert are one."""
        ...

    async def add(self, schedule: Schedule, tenant_id: str) -> None: ...
    async def update(self, schedule: Schedule, tenant_id: str) -> None: ...
    async def delete(self, ident: str) -> None: ...

    async def claim_due(self, ident: str) -> Schedule | None:
        """Lock the schedule if it is still due and no other transaction holds it (else
        None at once): the lock lasts until the unit of work ends."""
        ...


class ScheduleUnitOfWork(UnitOfWork, Protocol):
    @property
    def schedules(self) -> ScheduleRepository: ...


class ScheduleUnitOfWorkFactory(Protocol):
    def __call__(self, tenant_schema: str | None = None) -> ScheduleUnitOfWork: ...


class ScheduleIndex(Protocol):
    async def due(self, limit: int) -> list[DueSchedule]:
        """Schedules of any tenant whose next run is due, the most overdue first."""
        ...


# --------------------------------------------------------------------------- cron


def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    if not name or len(name) > MAX_TIMEZONE or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def next_run(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time strictly after `after` that `cron` names in `timezone` (UTC)."""
    zone = _zone(timezone) or UTC
    start = after.astimezone(zone)
    following: datetime = croniter(cron, start).get_next(datetime)
    return following.astimezone(UTC)


def _valid_cron(cron: str) -> bool:
    try:
        return bool(croniter.is_valid(cron))
    except Exception:
        return False


def check_cron(check: Checker, field: str, cron: str) -> str:
    cron = " ".join(cron.split())
    if not cron:
        check.fail(field, "must not be empty")
    elif len(cron) > MAX_CRON:
        check.fail(field, f"must be at most {MAX_CRON} characters")
    elif len(cron.split(" ")) != 5:
        check.fail(field, "must have five fields: minute hour day-of-month month day-of-week")
    elif not _valid_cron(cron):
        check.fail(field, "is not a valid cron expression")
    else:
        try:
            next_run(cron, "UTC", datetime.now(UTC))
        except CroniterBadDateError:
            check.fail(field, "never matches a date")
        except Exception:  # whatever croniter raises on odd input is the input's fault
            check.fail(field, "is not a valid cron expression")
    return cron


def check_timezone(check: Checker, field: str, timezone: str) -> str:
    timezone = timezone.strip()
    if _zone(timezone) is None:
        check.fail(field, "must be an IANA timezone name such as Europe/Berlin or UTC")
    return timezone


# --------------------------------------------------------------------------- use cases


class ScheduleService:
    def __init__(
        self,
        uow: ScheduleUnitOfWorkFactory,
        executions: ExecutionService,
        index: ScheduleIndex,
        *,
        max_schedules: int = DEFAULT_MAX_SCHEDULES,
    ) -> None:
        self._uow = uow
        self._executions = executions
        self._index = index
        self.max_schedules = max_schedules
        self.paused = False  # tests stop this process's scheduler loop

    # ---- reads

    async def get(self, p: Principal, ident: str) -> Schedule:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            found = await uow.schedules.get(require_id("schedule", ident))
        if found is None:
            raise NotFound("schedule", ident)
        return found

    async def list(
        self, p: Principal, first: int, after: str | None, flow_id: str | None = None
    ) -> Page[Schedule]:
        p.require(Action.READ)
        if flow_id is not None:
            try:
                require_id("flow", flow_id)
            except NotFound:
                return Page(items=[], has_next_page=False)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.schedules.page(first, after, flow_id)

    # ---- writes

    def _clean(self, data: ScheduleInput) -> tuple[str, str | None, dict[str, Any] | None]:
        check = Checker("input.")
        cron = check_cron(check, "cron", data.cron)
        timezone = None
        if data.timezone is not None:
            timezone = check_timezone(check, "timezone", data.timezone)
        check.raise_if_any()
        inputs = None
        if data.inputs is not None:
            try:
                inputs = self._executions.check_inputs(data.inputs)
            except BadUserInput as exc:
                raise BadUserInput(
                    exc.message, {f"input.{k}": v for k, v in exc.fields.items()}
                ) from None
        return cron, timezone, inputs

    async def _flow(self, uow: ScheduleUnitOfWork, flow_id: str) -> Flow:
        flow = await uow.flows.get(require_id("flow", flow_id))
        if flow is None:
            err = NotFound("flow", flow_id)
            err.extensions["fields"] = {"input.flowId": "flow not found"}
            raise err
        return flow

    @staticmethod
    def _check_flow_inputs(flow: Flow, inputs: dict[str, Any]) -> None:
        """The inputs as `executeFlow` will see them: every INPUT node's schema."""
        for node in flow.nodes:
            if node.kind == NodeKind.INPUT and node.config.get("schema"):
                try:
                    validate_inputs(inputs, node.config["schema"])
                except BadUserInput as exc:
                    raise BadUserInput(
                        f"schedule inputs: {exc.message}",
                        {f"input.{k}": v for k, v in exc.fields.items()}
                        or {"input.inputs": exc.message},
                    ) from None

    async def create(self, p: Principal, data: ScheduleInput) -> Schedule:
        p.require(Action.WRITE)
        cron, timezone, inputs = self._clean(data)
        timezone = timezone or DEFAULT_TIMEZONE
        inputs = inputs or {}
        enabled = True if data.enabled is None else data.enabled
        now = datetime.now(UTC)
        async with self._uow(p.tenant_schema) as uow:
            flow = await self._flow(uow, data.flow_id)
            self._check_flow_inputs(flow, inputs)
            count = await uow.schedules.lock_and_count()
            if count >= self.max_schedules:
                raise LimitExceeded(
                    f"the team already has {count} schedules; the limit is {self.max_schedules}",
                    extensions={"limit": "maxSchedules", "max": self.max_schedules},
                )
            schedule = Schedule(
                id=str(uuid.uuid4()),
                flow_id=flow.id,
                cron=cron,
                timezone=timezone,
                inputs=inputs,
                enabled=enabled,
                next_run_at=next_run(cron, timezone, now) if enabled else None,
                last_execution_id=None,
                created_by=p.user_id or p.api_key_id,
                created_at=now,
                updated_at=now,
            )
            await uow.schedules.add(schedule, p.tenant_id)
            await uow.commit()
        return schedule

    async def update(self, p: Principal, ident: str, data: ScheduleInput) -> Schedule:
        p.require(Action.WRITE)
        cron, timezone, inputs = self._clean(data)
        now = datetime.now(UTC)
        async with self._uow(p.tenant_schema) as uow:
            current = await uow.schedules.get(require_id("schedule", ident), for_update=True)
            if current is None:
                raise NotFound("schedule", ident)
            flow = await self._flow(uow, data.flow_id)
            new_inputs = current.inputs if inputs is None else inputs
            self._check_flow_inputs(flow, new_inputs)
            new_timezone = current.timezone if timezone is None else timezone
            enabled = current.enabled if data.enabled is None else data.enabled
            timing_changed = (cron, new_timezone, enabled) != (
                current.cron,
                current.timezone,
                current.enabled,
            )
            current.flow_id, current.cron, current.timezone = flow.id, cron, new_timezone
            current.inputs, current.enabled = new_inputs, enabled
            if not enabled:
                current.next_run_at = None
            elif timing_changed or current.next_run_at is None:
                current.next_run_at = next_run(cron, new_timezone, now)
            current.updated_at = now
            await uow.schedules.update(current, p.tenant_id)
            await uow.commit()
        return current

    async def delete(self, p: Principal, ident: str) -> bool:
        p.require(Action.WRITE)
        async with self._uow(p.tenant_schema) as uow:
            current = await uow.schedules.get(require_id("schedule", ident), for_update=True)
            if current is None:
                raise NotFound("schedule", ident)
            await uow.schedules.delete(ident)
            await uow.commit()
        return True

    # ---- the scheduler

    async def fire_due(self, limit: int = 50) -> builtins.list[Execution]:
        """Start a run of every due schedule this process can claim; returns the runs."""
        started: builtins.list[Execution] = []
        for due in await self._index.due(limit):
            try:
                execution = await self._fire(due)
            except Exception:
                log.exception("firing schedule %s failed", due.schedule_id)
                continue
            if execution is not None:
                started.append(execution)
        return started

    async def _fire(self, due: DueSchedule) -> Execution | None:
        # The run is stored as a member of the tenant would start it; it names the
        # schedule as its creator.
        system = Principal(due.tenant_id, due.tenant_schema, Role.MEMBER)
        execution: Execution | None = None
        quota = await self._executions.quota_of(due.tenant_id)
        async with self._uow(due.tenant_schema) as uow:
            schedule = await uow.schedules.claim_due(due.schedule_id)
            if schedule is None:
                return None  # another process has it, it moved on, or it is gone
            try:
                execution = await self._executions.add_flow_execution(
                    uow,
                    system,
                    schedule.flow_id,
                    schedule.inputs,
                    created_by=f"schedule:{schedule.id}",
                    quota=quota,
                )
            except DomainError as exc:
                log.warning(
                    "schedule %s skipped a run: %s",
                    schedule.id,
                    exc.message,
                    extra={"tenant_id": due.tenant_id},
                )
            now = datetime.now(UTC)
            schedule.next_run_at = (
                next_run(schedule.cron, schedule.timezone, now) if schedule.enabled else None
            )
            if execution is not None:
                schedule.last_execution_id = execution.id
            await uow.schedules.update(schedule, due.tenant_id)
            await uow.commit()
        if execution is not None:
            await self._executions.announce(system, execution)
        return execution

    async def run_forever(self, interval: float) -> None:
        """The scheduler loop of this process (every API and worker process runs one)."""
        while True:
            if not self.paused:
                try:
                    await self.fire_due()
                except Exception:
                    log.exception("scheduler tick failed")
            await asyncio.sleep(interval)

"""`crewgraph tenants list | show | suspend | activate | set-quota`: operator commands that
act on the public tenant registry directly (the operator is not a tenant user)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from domain.errors import DomainError
from domain.tenants import TenantAdminService, TenantQuota, TenantRecord

if TYPE_CHECKING:
    from server.settings import Settings

T = TypeVar("T")
out = Console()
err = Console(stderr=True)
tenants_commands = typer.Typer(help="Operate tenants: status and quotas.", no_args_is_help=True)


def default_quota(settings: Settings) -> TenantQuota:
    return TenantQuota(
        max_concurrent_executions=settings.max_concurrent_executions,
        max_executions_per_day=settings.max_executions_per_day,
        max_tokens_per_day=settings.max_tokens_per_day,
        max_chat_sessions=settings.max_chat_sessions,
    )


def _run(op: Callable[[TenantAdminService], Awaitable[T]]) -> T:
    from server.bootstrap import build_container
    from server.cli import _ready_settings

    settings = _ready_settings()
    if not settings.database_url or not settings.redis_url:
        err.print("[red]DATABASE_URL and REDIS_URL must be set (those of the servers)[/red]")
        raise typer.Exit(2)

    async def main() -> T:
        # The servers' own wiring: a suspension reaches their sockets and runs through
        # Redis, and the audit entries go to MongoDB (written before the command exits).
        container = build_container(settings)
        try:
            return await op(container.tenant_admin)
        finally:
            await container.aclose()

    try:
        return asyncio.run(main())
    except DomainError as e:
        err.print(f"[red]{e.message}[/red]")
        raise typer.Exit(1) from None


def _limit_text(value: int) -> str:
    return "no limit" if value == 0 else str(value)  # 0: no limit (domain/quotas.py)


def _show(service: TenantAdminService, record: TenantRecord) -> None:
    table = Table(title=f"tenant {record.slug}", show_header=False)
    table.add_row("id", record.id)
    table.add_row("name", record.name)
    table.add_row("status", record.status.value)
    if record.suspended_reason:
        table.add_row("suspended reason", record.suspended_reason)
        table.add_row("suspended at", str(record.suspended_at))
    quota = service.quota_of(record)
    for name in ("max_concurrent_executions", "max_executions_per_day"):
        table.add_row(name.replace("_", "-"), _limit_text(getattr(quota, name)))
    for name in ("max_tokens_per_day", "max_chat_sessions"):
        table.add_row(name.replace("_", "-"), _limit_text(getattr(quota, name)))
    out.print(table)


@tenants_commands.command("list")
def list_tenants() -> None:
    """Every tenant with its status."""

    async def op(service: TenantAdminService) -> None:
        table = Table(title="tenants")
        for column in ("slug", "name", "status", "created"):
            table.add_column(column)
        for r in await service.list():
            table.add_row(r.slug, r.name, r.status.value, r.created_at.isoformat())
        out.print(table)

    _run(op)


@tenants_commands.command("show")
def show(slug: str) -> None:
    """One tenant: status and effective quota."""

    async def op(service: TenantAdminService) -> None:
        _show(service, await service.show(slug))

    _run(op)


@tenants_commands.command("suspend")
def suspend(slug: str, reason: str = typer.Option(..., "--reason")) -> None:
    """Suspend a tenant (nothing is deleted)."""

    async def op(service: TenantAdminService) -> None:
        _show(service, await service.suspend(slug, reason))

    _run(op)


@tenants_commands.command("activate")
def activate(slug: str) -> None:
    """Restore a suspended tenant's access."""

    async def op(service: TenantAdminService) -> None:
        _show(service, await service.activate(slug))

    _run(op)


@tenants_commands.command("set-quota")
def set_quota(
    slug: str,
    max_concurrent_executions: int | None = typer.Option(
        None, min=1, help="RUNNING executions at once; more wait as PENDING."
    ),
    max_executions_per_day: int | None = typer.Option(
        None, min=0, help="Executions started per UTC day; 0: no limit."
    ),
    max_tokens_per_day: int | None = typer.Option(
        None, min=0, help="LLM tokens per UTC day; 0: no limit."
    ),
    max_chat_sessions: int | None = typer.Option(
        None, min=0, help="Chat sessions existing at once; 0: no limit."
    ),
) -> None:
    """Override a tenant's quotas (unset options keep their value). They apply at once,
    in every process: the next run, LLM call or chat session is checked against them."""
    changes = {
        "max_concurrent_executions": max_concurrent_executions,
        "max_executions_per_day": max_executions_per_day,
        "max_tokens_per_day": max_tokens_per_day,
        "max_chat_sessions": max_chat_sessions,
    }

    async def op(service: TenantAdminService) -> None:
        _show(service, await service.set_quota(slug, changes))

    _run(op)

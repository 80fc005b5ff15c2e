"""`crewgraph backup [--tenant SLUG] OUT` and `crewgraph restore IN [--replace]`
(persistence/backup.py does the work)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from persistence.backup import BackupSettings
    from server.crypto import AesGcmBox, MissingKeyBox

console = Console(stderr=True)


def _backup_settings() -> tuple[BackupSettings, AesGcmBox | MissingKeyBox]:
    from persistence.backup import BackupSettings
    from server.cli import _ready_settings
    from server.crypto import box_from_settings
    from server.settings import Settings

    settings: Settings = _ready_settings()
    if not settings.mongodb_url:
        from server.cli import resolve_services

        settings = resolve_services(settings, mongo=True)
    assert settings.database_url is not None
    box = box_from_settings(
        settings.secret_key, settings.secret_key_file, settings.previous_secret_keys
    )
    return (
        BackupSettings(
            database_url=settings.database_url,
            mongodb_url=settings.mongodb_url,
            mongodb_database=settings.mongodb_database,
            mongodb_timeout_seconds=settings.mongodb_timeout_seconds,
        ),
        box,
    )


def register(cli: typer.Typer) -> None:
    @cli.command(short_help="Write every tenant (or one) to a .tar.gz archive.")
    def backup(
        out: Path = typer.Argument(..., help="the archive to write (.tar.gz)"),
        tenant: str | None = typer.Option(None, help="only this tenant's slug (default: all)"),
    ) -> None:
        """Write every tenant (or one) to a tar.gz: its PostgreSQL schema (pg_dump), its
        rows in `public`, its MongoDB documents, a manifest with checksums."""
        from persistence.backup import BackupError, create_backup
        from server.cli import working

        settings, box = _backup_settings()
        try:
            with working(f"backing up to {out}"):
                done = asyncio.run(create_backup(settings, box, out, tenant))
        except BackupError as exc:
            console.print(f"[red]backup failed:[/red] {exc}")
            raise typer.Exit(1) from exc
        for t in done:
            console.print(f"{t.slug}: {sum(t.rows.values())} row(s)/document(s)")
        console.print(f"wrote {out} ({len(done)} tenant(s))")

    @cli.command(short_help="Restore the tenants of a `crewgraph backup` archive.")
    def restore(
        archive: Path = typer.Argument(..., help="an archive from `crewgraph backup`"),
        replace: bool = typer.Option(False, help="overwrite tenants that exist here"),
    ) -> None:
        """Restore the tenants of an archive (same CREWGRAPH_SECRET_KEY as the backup).
        Tenants that exist are refused unless --replace."""
        from persistence.backup import BackupError, restore_backup

        if not archive.is_file():  # before any embedded server starts
            console.print(f"[red]restore refused:[/red] {archive}: no such file")
            raise typer.Exit(1)
        from server.cli import working

        settings, box = _backup_settings()
        try:
            with working(f"restoring from {archive}"):
                done = asyncio.run(restore_backup(settings, box, archive, replace=replace))
        except BackupError as exc:
            console.print(f"[red]restore refused:[/red] {exc}")
            raise typer.Exit(1) from exc
        for t in done:
            console.print(f"{t.slug}: {sum(t.rows.values())} row(s)/document(s)")
        console.print(f"restored {len(done)} tenant(s) from {archive}")

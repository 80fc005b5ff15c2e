"""`crewgraph` command: serve, migrate, export-schema, worker, ..."""

from __future__ import annotations

import asyncio
import atexit
from pathlib import Path

import typer
from rich.console import Console

from server.settings import Settings

app = typer.Typer(
    no_args_is_help=True, help="Crewgraph: agents, crews, tools and flows over GraphQL."
)
console = Console(stderr=True)


def resolve_services(settings: Settings, *, embedded_ok: bool = True) -> Settings:
    """Fill DATABASE_URL / REDIS_URL with embedded servers when they are not set."""
    from persistence.embedded import EmbeddedServices, start_postgres, start_redis

    if settings.database_url and settings.redis_url:
        return settings
    if not embedded_ok:
        raise typer.BadParameter("DATABASE_URL and REDIS_URL are required")
    services = EmbeddedServices()
    atexit.register(services.stop)
    updates: dict[str, str] = {}
    data = settings.data_dir.resolve()
    if not settings.database_url:
        console.print(f"[dim]starting embedded PostgreSQL in {data / 'postgres'}[/dim]")
        updates["database_url"] = start_postgres(data, services)
    if not settings.redis_url:
        console.print(f"[dim]starting embedded Redis in {data / 'redis'}[/dim]")
        updates["redis_url"] = start_redis(data / "redis", services)
    return settings.model_copy(update=updates)


def _local_settings(settings: Settings) -> Settings:
    """Laptop mode (no DATABASE_URL): keep generated secrets in the data dir so
    restarts keep sessions valid and stored API keys readable."""
    from server.crypto import new_key_text

    if settings.database_url is not None:
        return settings
    updates: dict[str, object] = {}
    if settings.jwt_secret is None:
        updates["jwt_secret"] = settings.local_secret("jwt")
    if settings.secret_key is None and settings.secret_key_file is None:
        updates["secret_key"] = settings.local_secret("master-key", new_key_text)
    return settings.model_copy(update=updates)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="defaults to CREWGRAPH_HOST"),
    port: int | None = typer.Option(None, help="defaults to CREWGRAPH_PORT"),
) -> None:
    """Migrate, then serve the API (GraphiQL at /graphql)."""
    import uvicorn

    from persistence.migrate import upgrade_all
    from server.app import create_app
    from server.bootstrap import build_container
    from server.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    settings = resolve_services(_local_settings(settings))
    container = build_container(settings)

    async def startup() -> None:
        async with container.db.engine.begin() as conn:
            await upgrade_all(conn)

    application = create_app(container, on_startup=startup)
    h, p = host or settings.host, port or settings.port
    console.print(f"[bold green]Crewgraph[/bold green] GraphiQL at http://{h}:{p}/graphql")
    uvicorn.run(application, host=h, port=p, log_level="warning", ws_per_message_deflate=False)


@app.command()
def migrate() -> None:
    """Upgrade the public schema and every tenant schema to the newest revision."""
    from persistence.db import Database
    from persistence.migrate import upgrade_all

    settings = resolve_services(_local_settings(Settings()))

    async def run() -> list[str]:
        db = Database(settings.database_url or "")
        try:
            async with db.engine.begin() as conn:
                return await upgrade_all(conn)
        finally:
            await db.dispose()

    schemas = asyncio.run(run())
    console.print(f"migrated public and {len(schemas)} tenant schema(s)")


@app.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every tenant's stored secrets with CREWGRAPH_SECRET_KEY.

    Put the old key(s) in CREWGRAPH_PREVIOUS_SECRET_KEYS while this runs."""
    import sqlalchemy as sa

    from domain.providers import rotate_keys
    from persistence.db import Database
    from persistence.uow import SqlUnitOfWorkFactory
    from server.crypto import AesGcmBox, box_from_settings

    settings = resolve_services(_local_settings(Settings()))
    box = box_from_settings(
        settings.secret_key, settings.secret_key_file, settings.previous_secret_keys
    )
    if not isinstance(box, AesGcmBox):
        raise typer.BadParameter("CREWGRAPH_SECRET_KEY (or CREWGRAPH_SECRET_KEY_FILE) is not set")

    async def run() -> int:
        db = Database(settings.database_url or "")
        try:
            async with db.connect() as conn:
                rows = await conn.execute(sa.text("SELECT id, schema_name FROM public.tenants"))
                tenants = [(str(r[0]), r[1]) for r in rows]
            return await rotate_keys(SqlUnitOfWorkFactory(db), box, tenants)  # type: ignore[arg-type]
        finally:
            await db.dispose()

    count = asyncio.run(run())
    console.print(f"re-encrypted {count} secret(s) under key {box.current_key_id}")


@app.command()
def worker(
    burst: bool = typer.Option(False, help="exit once the queue is empty"),
) -> None:
    """Run executions from the queue (for API processes with CREWGRAPH_WORKER_MODE=arq).

    Needs the API's DATABASE_URL, REDIS_URL, CREWGRAPH_REDIS_PREFIX and secrets; run as
    many as you like. PostgreSQL leases make each execution run on one worker at a time,
    and a killed worker's executions resume elsewhere once their lease expires."""
    from server.logging import configure_logging
    from server.workers import run_worker

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if not settings.database_url or not settings.redis_url:
        raise typer.BadParameter("a worker needs DATABASE_URL and REDIS_URL")
    run_worker(settings, burst=burst)


@app.command("export-schema")
def export_schema(
    out: Path = typer.Option(Path("graphql/schema.graphql"), help="where to write the SDL"),
) -> None:
    """Write the GraphQL SDL (checked for drift in tests)."""
    from schema import schema

    out.write_text(schema.as_str() + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()

"""`crewgraph` command: serve, migrate, export-schema, worker, ..."""

from __future__ import annotations

import asyncio
import atexit
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from server.backup_cli import register as register_backup_commands
from server.local_model_cli import commands as local_model_commands
from server.settings import Settings

if TYPE_CHECKING:
    from persistence.embedded import EmbeddedServices
    from server.bootstrap import WrapExecutors

console = Console(stderr=True)


def resolve_services(
    settings: Settings,
    *,
    embedded_ok: bool = True,
    mongo: bool = False,
    services: EmbeddedServices | None = None,
) -> Settings:
    """Fill DATABASE_URL / REDIS_URL (and MONGODB_URL when `mongo`) with embedded servers
    when they are not set. They stop at exit, or earlier with `services.stop()`."""
    from persistence.embedded import EmbeddedServices, start_mongo, start_postgres, start_redis

    if settings.database_url and settings.redis_url and (settings.mongodb_url or not mongo):
        return settings
    if not embedded_ok:
        raise typer.BadParameter("DATABASE_URL and REDIS_URL are required")
    services = services if services is not None else EmbeddedServices()
    atexit.register(services.stop)
    updates: dict[str, str] = {}
    data = settings.data_dir.resolve()
    if not settings.database_url:
        console.print(f"[dim]starting embedded PostgreSQL in {data / 'postgres'}[/dim]")
        updates["database_url"] = start_postgres(data, services)
    if not settings.redis_url:
        console.print(f"[dim]starting embedded Redis in {data / 'redis'}[/dim]")
        updates["redis_url"] = start_redis(data / "redis", services)
    if mongo and not settings.mongodb_url:
        updates["mongodb_url"] = start_mongo(data, services)
        console.print(
            f"[dim]embedded MongoDB (nx-27017) at {updates['mongodb_url']}, "
            f"data in {data / 'mongo'}[/dim]"
        )
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


@contextmanager
def working(description: str) -> Iterator[None]:
    """A live spinner with the elapsed time on stderr while a long command works (a
    terminal only: rich prints nothing animated into a pipe or a log)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        progress.add_task(description, total=None)
        yield


def _ready_settings() -> Settings:
    """Settings from the environment, with embedded services and local secrets filled in."""
    return resolve_services(_local_settings(Settings()))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How `crewgraph serve` runs uvicorn. X-Forwarded-For / -Proto are believed only from
    CREWGRAPH_TRUSTED_PROXIES (uvicorn otherwise trusts them from loopback, which let any
    local client pick its address and dodge per-address limits)."""
    trusted = ",".join(p.strip() for p in settings.trusted_proxies.split(",") if p.strip())
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        "log_config": None,  # uvicorn's lines go through our JSON logging (server/logging.py)
        "ws_per_message_deflate": False,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted,
    }
    if settings.ssl_certfile or settings.ssl_keyfile:
        options["ssl_certfile"] = str(settings.ssl_certfile) if settings.ssl_certfile else None
        options["ssl_keyfile"] = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
    return options


def _check_tls(settings: Settings) -> None:
    """A certificate needs its key (unless the certificate file holds both), and both
    must be readable; said before anything starts rather than as a uvicorn traceback."""
    if settings.ssl_keyfile and not settings.ssl_certfile:
        raise typer.BadParameter("--ssl-keyfile needs --ssl-certfile")
    for path in (settings.ssl_certfile, settings.ssl_keyfile):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"{path}: no such file")


def _exit_on_sigterm() -> None:
    """Until the server handles signals itself: SIGTERM ends the process like Ctrl-C
    does (through exit handlers), so embedded services started meanwhile are stopped."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def build_cli(wrap_executors: WrapExecutors | None = None) -> typer.Typer:
    """The command line. `wrap_executors` reaches `build_container` in `serve` and
    `worker`; only the test entry point (tests/support/cli.py) passes one."""
    cli = typer.Typer(
        no_args_is_help=True, help="Crewgraph: agents, crews, tools and flows over GraphQL."
    )

    @cli.command(short_help="Migrate, then serve the API and GraphiQL (/graphql).")
    def serve(
        host: str | None = typer.Option(None, help="defaults to CREWGRAPH_HOST"),
        port: int | None = typer.Option(None, help="defaults to CREWGRAPH_PORT"),
        ssl_certfile: Path | None = typer.Option(
            None, help="serve HTTPS with this PEM certificate (CREWGRAPH_SSL_CERTFILE)"
        ),
        ssl_keyfile: Path | None = typer.Option(
            None, help="the certificate's PEM private key (CREWGRAPH_SSL_KEYFILE)"
        ),
    ) -> None:
        """Migrate, then serve the API (GraphiQL at /graphql) until SIGTERM or SIGINT,
        which drain it (server/lifecycle.py)."""
        from persistence.embedded import EmbeddedServices
        from server.logging import configure_logging

        _exit_on_sigterm()
        settings = Settings()
        # The options win over the environment, also for how this server reaches itself
        # (the scripted model's provider resolves to host:port at call time).
        settings = settings.model_copy(
            update={
                "host": host or settings.host,
                "port": port or settings.port,
                "ssl_certfile": ssl_certfile or settings.ssl_certfile,
                "ssl_keyfile": ssl_keyfile or settings.ssl_keyfile,
            }
        )
        _check_tls(settings)
        configure_logging(settings.log_level, settings.log_json)
        embedded = EmbeddedServices()
        try:
            _serve(settings, embedded)
        finally:
            embedded.stop()  # after the application's own shutdown

    def _serve(settings: Settings, embedded: EmbeddedServices) -> None:
        from persistence.migrate import upgrade_all
        from server.app import create_app
        from server.bootstrap import build_container
        from server.lifecycle import Lifecycle
        from server.lifecycle import serve as serve_until_signal
        from server.local_model_cli import start_for_serve

        settings = resolve_services(_local_settings(settings), mongo=True, services=embedded)
        # The real tiny model, when `make local-model` installed it (laptop profile).
        local_model = start_for_serve(settings)
        if local_model is not None:
            settings = settings.model_copy(update={"local_model_url": local_model.base_url})
        container = build_container(settings, wrap_executors=wrap_executors)

        async def startup() -> None:
            async with container.db.engine.begin() as conn:
                await upgrade_all(conn)

        lifecycle = Lifecycle()
        sweeper = container.runtime.sweeper

        def stop_sweeping() -> None:
            # Executions another process hands back meanwhile go to a process that stays.
            sweeper.paused = True

        lifecycle.on_drain(stop_sweeping)
        application = create_app(container, on_startup=startup, lifecycle=lifecycle)
        h, p = settings.host, settings.port
        scheme = "https" if settings.ssl_certfile else "http"
        console.print(f"[bold green]Crewgraph[/bold green] GraphiQL at {scheme}://{h}:{p}/graphql")
        server = serve_until_signal(
            application, uvicorn_options(settings), lifecycle, settings.shutdown_grace_seconds
        )
        if not server.started:
            raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the port is taken, ...

    @cli.command(short_help="Upgrade the public schema and every tenant schema.")
    def migrate() -> None:
        """Upgrade the public schema and every tenant schema to the newest revision."""
        from persistence.migrate import upgrade_all
        from server.bootstrap import open_persistence

        async def run() -> list[str]:
            async with open_persistence(_ready_settings()) as persistence:
                async with persistence.db.engine.begin() as conn:
                    return await upgrade_all(conn)

        with working("migrating the public and tenant schemas"):
            schemas = asyncio.run(run())
        console.print(f"migrated public and {len(schemas)} tenant schema(s)")

    @cli.command("rotate-key", short_help="Re-encrypt stored secrets with CREWGRAPH_SECRET_KEY.")
    def rotate_key() -> None:
        """Re-encrypt every tenant's stored secrets with CREWGRAPH_SECRET_KEY.

        Put the old key(s) in CREWGRAPH_PREVIOUS_SECRET_KEYS while this runs."""
        from domain.providers import rotate_keys
        from domain.webhooks import rotate_webhook_secrets
        from server.bootstrap import open_persistence
        from server.crypto import AesGcmBox, box_from_settings

        settings = _ready_settings()
        box = box_from_settings(
            settings.secret_key, settings.secret_key_file, settings.previous_secret_keys
        )
        if not isinstance(box, AesGcmBox):
            raise typer.BadParameter(
                "CREWGRAPH_SECRET_KEY (or CREWGRAPH_SECRET_KEY_FILE) is not set"
            )

        async def run() -> int:
            async with open_persistence(settings) as persistence:
                async with persistence.uow() as uow:
                    tenants = [(t.id, t.schema_name) for t in await uow.tenants.all()]
                keys = await rotate_keys(persistence.uow, box, tenants)
                return keys + await rotate_webhook_secrets(persistence.uow, box, tenants)

        with working("re-encrypting stored secrets"):
            count = asyncio.run(run())
        console.print(f"re-encrypted {count} secret(s) under key {box.current_key_id}")

    @cli.command(short_help="Run queued executions (API with CREWGRAPH_WORKER_MODE=arq).")
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
        # Without MONGODB_URL: the data dir's embedded server (the API's, when it runs).
        settings = resolve_services(settings, mongo=True)
        run_worker(settings, burst=burst, wrap_executors=wrap_executors)

    @cli.command("export-schema", short_help="Write the GraphQL SDL (graphql/schema.graphql).")
    def export_schema(
        out: Path = typer.Option(Path("graphql/schema.graphql"), help="where to write the SDL"),
    ) -> None:
        """Write the GraphQL SDL (checked for drift in tests)."""
        from server.graphql_schema import schema

        out.write_text(schema.as_str() + "\n")
        console.print(f"wrote {out}")

    cli.add_typer(local_model_commands, name="local-model")
    from server.tenants_cli import tenants_commands

    cli.add_typer(tenants_commands, name="tenants")
    register_backup_commands(cli)
    return cli


app = build_cli()

if __name__ == "__main__":
    app()

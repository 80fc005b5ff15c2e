"""`crewgraph local-model start|stop|status`, and the real tiny model under `crewgraph serve`."""

from __future__ import annotations

import atexit

import typer
from rich.console import Console

from server.local_model import (
    LocalModelError,
    LocalModelInstall,
    LocalModelSettings,
    RunningModel,
    find_install,
    install_root,
    start,
    status,
    stop,
)
from server.settings import Settings

console = Console(stderr=True)
commands = typer.Typer(
    no_args_is_help=True,
    help="The real tiny local model (SmolLM2-135M on llama.cpp), installed by `make local-model`.",
)


def _installed() -> LocalModelInstall:
    root = install_root(Settings().data_dir, LocalModelSettings())
    install = find_install(root)
    if install is None:
        console.print(f"the local model is not installed in {root}: make local-model")
        raise typer.Exit(1)
    return install


@commands.command("start")
def start_command() -> None:
    """Start it in the background on 127.0.0.1 (or find it running); prints its base URL."""
    install = _installed()
    try:
        running = start(install, LocalModelSettings())
    except LocalModelError as exc:
        console.print(str(exc))
        raise typer.Exit(1) from None
    verb = "started" if running.started else "already running"
    console.print(f"local model {verb} (pid {running.pid})")
    print(running.base_url)


@commands.command("stop")
def stop_command() -> None:
    """Stop the server started by `start` or `crewgraph serve` (by its recorded pid)."""
    stopped = stop(_installed())
    console.print("local model stopped" if stopped else "local model was not running")


@commands.command("status")
def status_command() -> None:
    """Exit 0 and print the base URL when it runs, exit 1 otherwise."""
    running = status(_installed())
    if running is None:
        console.print("local model installed, not running")
        raise typer.Exit(1)
    print(running.base_url)


def start_for_serve(settings: Settings) -> RunningModel | None:
    """Under `crewgraph serve`: start (or find) the local model when it is installed and
    enabled (by default in the laptop profile). A model this process started is stopped
    when it exits. A model that fails to start is reported and skipped: the API serves
    without it."""
    local = LocalModelSettings()
    enabled = local.enabled if local.enabled is not None else settings.env == "laptop"
    install = find_install(install_root(settings.data_dir, local)) if enabled else None
    if install is None:
        return None
    try:
        running = start(install, local)
    except LocalModelError as exc:
        console.print(f"[yellow]local model not started[/yellow]: {exc}")
        return None
    if running.started:
        atexit.register(stop, install)
    console.print(f"[dim]local model SmolLM2-135M at {running.base_url}[/dim]")
    return running

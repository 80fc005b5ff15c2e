"""Test-only entry point: `python -m tests.support.cli serve|worker|...` is `crewgraph`
with the deliberately slow TOOL nodes of tests/support/slow_executors.py wired in.

Tests and benchmarks that start API or worker subprocesses use it; production code has
no hook for it."""

from __future__ import annotations

from server.cli import build_cli
from tests.support.slow_executors import wrap

app = build_cli(wrap_executors=wrap)

if __name__ == "__main__":
    app()

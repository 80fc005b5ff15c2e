"""`python -m bench <name>` rewrites its own sections of docs/benchmarks.md only."""

from __future__ import annotations

from bench.__main__ import _merge, _split

EXISTING = """# Benchmarks

Run with `make bench` on 2026-01-01 00:00 UTC.

## engine

`bench/bench_engine.py`, 2.0 s

engine table

## tenants

old tenants table

## Notes written by hand

kept as they are
"""

FRESH = """# Benchmarks

Run with `make bench` on 2026-02-02 00:00 UTC (short mode).

## tenants

`bench/bench_tenants.py`, 9.0 s

new tenants table

### a subsection

its text
"""


def test_a_subset_run_replaces_only_its_sections() -> None:
    head, sections = _split(_merge(EXISTING, FRESH, short=True))
    assert "2026-01-01" in head and "2026-02-02" not in head
    assert list(sections) == ["engine", "tenants", "Notes written by hand"]
    assert sections["engine"] == "\n`bench/bench_engine.py`, 2.0 s\n\nengine table\n"
    assert "new tenants table" in sections["tenants"]
    assert "### a subsection\n\nits text" in sections["tenants"]
    assert "old tenants table" not in sections["tenants"]
    assert "Rerun on its own on" in sections["tenants"]
    assert sections["Notes written by hand"] == "\nkept as they are\n"


def test_a_new_bench_gets_a_section() -> None:
    fresh = FRESH.replace("## tenants", "## query path")
    _, sections = _split(_merge(EXISTING, fresh, short=False))
    assert list(sections) == ["engine", "query path", "tenants", "Notes written by hand"]

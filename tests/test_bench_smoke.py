"""Benchmarks run in their short smoke mode, so `make bench` never rots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported at run time, pytest would try to collect the class
    from tests.support.services import TestServices

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))


@pytest.mark.parametrize("name", BENCHES)
def test_bench_short_mode(name: str, services: TestServices) -> None:
    # The session's MongoDB (each benchmark works in a database of its own and drops it):
    # one embedded server fewer to start and stop per benchmark.
    env = {**os.environ, "CREWGRAPH_TEST_MONGODB_URL": services.mongo_url}
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--short", "--no-write", name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.strip(), "the benchmark printed nothing"

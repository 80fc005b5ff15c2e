"""`crewgraph --help` lists every command, each on one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

EXPECTED = {
    "serve",
    "worker",
    "migrate",
    "export-schema",
    "tenants",
    "rotate-key",
    "backup",
    "restore",
    "local-model",
}


def help_rows() -> dict[str, list[str]]:
    """Command name -> its description lines, from the Commands panel."""
    env = {**os.environ, "COLUMNS": "160", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    panel = done.stdout.split("Commands", 1)[1]
    rows: dict[str, list[str]] = {}
    last = None
    for line in panel.splitlines()[1:]:
        body = line.strip().strip("│|").rstrip()
        if not body.strip() or set(body.strip()) <= set("─╰╯-+"):
            continue
        match = re.match(r"^ ?([a-z][a-z0-9-]*)\s{2,}(\S.*)$", body)
        if match:
            last = match.group(1)
            rows[last] = [match.group(2).strip()]
        elif last is not None:
            rows[last].append(body.strip())
    return rows


def test_help_lists_every_command_on_one_line() -> None:
    rows = help_rows()
    assert EXPECTED <= set(rows), sorted(EXPECTED - set(rows))
    for name, lines in rows.items():
        assert len(lines) == 1, f"{name}: {lines}"
        assert len(lines[0]) <= 90, f"{name}: keep the summary short"


def test_every_command_has_its_own_help() -> None:
    from typer.testing import CliRunner

    from server.cli import app

    runner = CliRunner()
    for name in EXPECTED:
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output

"""sandbox/runner.py on its own, run by this machine's python exactly as the backends
run it (``python3 -I -B -c <source>``, one request line on stdin). No isolation here:
only the protocol is under test."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from sandbox.output import runner_source


def run_runner(
    code: str, payload: Any = None, entrypoint: str = "run", **extra: Any
) -> tuple[list[dict[str, Any]], str, int]:
    request = {"code": code, "entrypoint": entrypoint, "input": payload or {}, **extra}
    proc = subprocess.run(
        [sys.executable, "-I", "-B", "-c", runner_source()],
        input=json.dumps(request).encode() + b"\n",
        capture_output=True,
        timeout=30,
    )
    frames = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return frames, proc.stderr.decode(), proc.returncode


def test_result_is_the_last_line_and_prints_are_framed() -> None:
    frames, err, code = run_runner(
        "import os, sys\n"
        "def run(x):\n"
        "    print('to stdout')\n"
        "    os.system('echo from a child process')\n"
        "    print('to stderr', file=sys.stderr)\n"
        "    return {'sum': x['a'] + x['b']}\n",
        {"a": 1, "b": 2},
    )
    assert code == 0
    result = frames[-1]
    assert result["ok"] is True and result["output"] == {"sum": 3} and result["error"] is None
    printed = "".join(f["data"] for f in frames[:-1])
    assert "to stdout\n" in printed and "from a child process\n" in printed
    assert "to stderr" in err
    assert result["usage"]["max_memory_bytes"] > 0


def test_async_entrypoint_and_custom_name() -> None:
    frames, _, code = run_runner("async def main(x):\n    return [x['v']]\n", {"v": 7}, "main")
    assert code == 0 and frames[-1]["output"] == [7]


def test_errors_are_reported_not_raised() -> None:
    frames, err, code = run_runner("def run(x):\n    raise ValueError('bad value')\n")
    assert code == 1
    assert frames[-1]["error"] == "ValueError: bad value"
    assert frames[-1]["error_type"] == "ValueError"
    assert 'File "<tool>", line 2' in err and "runner" not in err

    frames, _, _ = run_runner("x = 1\n")
    assert frames[-1]["error_type"] == "EntrypointError"

    frames, _, _ = run_runner("def run(x):\n    return object()\n")
    assert frames[-1]["error_type"] == "OutputTypeError"

    frames, _, _ = run_runner("def run(x):\n    raise SystemExit(3)\n")
    assert frames[-1]["error_type"] == "SystemExit"

    frames, _, _ = run_runner("def run(x)\n    return 1\n")
    assert frames[-1]["error_type"] == "SyntaxError" and "line 1" in frames[-1]["error"]


def test_scratch_directory_is_per_run() -> None:
    code = "import os\ndef run(x):\n    open('f', 'w').write('1')\n    return os.getcwd()\n"
    frames, _, _ = run_runner(code, scratch="abc123")
    cwd = frames[-1]["output"]
    assert cwd.endswith("/run-abc123")


def test_bad_request_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-I", "-B", "-c", runner_source()],
        input=b"not json\n",
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert json.loads(proc.stdout.splitlines()[-1])["error_type"] == "RunnerError"

"""The in-sandbox side of a python tool run. Standard library only, Python 3.7+.

The host passes this file's source as ``python3 -I -B -c <source>`` (it is never baked
into an image, so any image with python3 works) and writes ONE request line on stdin::

    {"code": "...", "entrypoint": "run", "input": {...}, "scratch": "<id>"}

The runner executes ``code`` in a fresh namespace, calls ``entrypoint(input)`` (awaiting
it when it is a coroutine function) and writes, on the process's stdout:

- zero or more ``{"stream": "stdout", "data": "..."}`` lines: what the user code printed
  on its standard output (fd 1 is a pipe the runner drains, so prints, subprocesses and
  ``os.write(1, ...)`` all land there and can never be confused with the result);
- exactly one final result line ``{"ok": bool, "output": ..., "error": str|null,
  "error_type": str|null, "usage": {...}}``.

User stderr (and tracebacks) go to the process's stderr unchanged. Everything about
limits (timeouts, OOM, output size) is decided by the host, not by this program.
"""

from __future__ import annotations

import builtins
import codecs
import json
import os
import resource
import shutil
import sys
import threading
import traceback
from typing import Any

RESULT_FD = -1
_EMIT_LOCK = threading.Lock()


def _emit(obj: dict[str, Any]) -> None:
    line = (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode(
        "utf-8", "replace"
    )
    view = memoryview(line)
    with _EMIT_LOCK:
        while view:
            written = os.write(RESULT_FD, view)
            view = view[written:]


def _drain(read_fd: int) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        text = decoder.decode(chunk)
        for start in range(0, len(text), 8192):  # small frames: the host caps precisely
            _emit({"stream": "stdout", "data": text[start : start + 8192]})
    tail = decoder.decode(b"", final=True)
    if tail:
        _emit({"stream": "stdout", "data": tail})


def _process_count() -> int | None:
    try:
        return sum(1 for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return None


def _usage() -> dict[str, Any]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "max_memory_bytes": max(own.ru_maxrss, kids.ru_maxrss) * 1024,
        "cpu_seconds": round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 4),
        # processes visible in this PID namespace when the run ends: the host recycles a
        # warm container when the user code left processes behind
        "processes": _process_count(),
    }


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the runner's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<tool>":
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _call(code: str, entrypoint: str, payload: Any) -> tuple[Any, str | None, str | None]:
    try:
        compiled = compile(code, "<tool>", "exec")
    except SyntaxError as exc:
        detail = f"{exc.msg} (line {exc.lineno}"
        if exc.offset:
            detail += f", column {exc.offset}"
        detail += ")"
        if exc.text:
            detail += ": " + exc.text.strip()
        return None, f"{type(exc).__name__}: {detail}", type(exc).__name__
    namespace = {"__name__": "__tool__", "__builtins__": builtins}
    try:
        exec(compiled, namespace)
        func = namespace.get(entrypoint)
        if not callable(func):
            return None, f"entrypoint {entrypoint!r} is not defined by the code", "EntrypointError"
        value = func(payload)
        if hasattr(value, "__await__"):  # async def entrypoint
            import asyncio

            async def _await(awaitable: Any) -> Any:
                return await awaitable

            value = asyncio.run(_await(value))
    except MemoryError:
        namespace.clear()
        return None, "MemoryError: memory limit exceeded", "MemoryError"
    except SystemExit as exc:
        return None, f"SystemExit: the code called exit({exc.code!r})", "SystemExit"
    except BaseException as exc:  # report anything the user code raised
        try:
            sys.stderr.write(_user_traceback(exc))
        except Exception:
            pass
        message = str(exc)
        return None, type(exc).__name__ + (": " + message if message else ""), type(exc).__name__
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, f"the return value is not JSON-serialisable: {exc}", "OutputTypeError"
    return value, None, None


def main() -> int:
    global RESULT_FD
    RESULT_FD = os.dup(1)  # non-inheritable: subprocesses of the user code never get it
    line = sys.stdin.buffer.readline()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    try:
        request = json.loads(line.decode("utf-8"))
        code = request["code"]
        entrypoint = request.get("entrypoint") or "run"
        payload = request.get("input") or {}
        scratch_name = str(request.get("scratch") or "run")
    except Exception as exc:
        _emit(
            {
                "ok": False,
                "output": None,
                "error": f"bad runner request: {exc}",
                "error_type": "RunnerError",
                "usage": _usage(),
            }
        )
        return 2

    # A private scratch directory per run, removed at its end.
    base = os.environ.get("TMPDIR") or "/tmp"
    scratch: str | None = os.path.join(
        base, "run-" + "".join(c for c in scratch_name if c.isalnum() or c in "-_.")
    )
    try:
        assert scratch is not None
        os.makedirs(scratch, mode=0o700, exist_ok=True)
        os.chdir(scratch)
        os.environ["TMPDIR"] = scratch
        import tempfile

        tempfile.tempdir = scratch
    except OSError:
        scratch = None

    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.close(write_fd)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
    drainer = threading.Thread(target=_drain, args=(read_fd,), daemon=True)
    drainer.start()

    output, error, error_type = _call(code, entrypoint, payload)

    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.dup2(devnull, 1)  # close our write end; the drainer sees EOF unless children hold it
    drainer.join(timeout=1.0)
    os.chdir("/")
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "ok": error is None,
        "output": output,
        "error": error,
        "error_type": error_type,
        "usage": _usage(),
    }
    try:
        _emit(result)
    except MemoryError:
        _emit(
            {
                "ok": False,
                "output": None,
                "error": "MemoryError while writing the result",
                "error_type": "MemoryError",
                "usage": None,
            }
        )
    return 0 if error is None else 1


if __name__ == "__main__":
    status = main()
    try:
        sys.stderr.flush()
    finally:
        os._exit(status)  # do not wait for threads the user code left running

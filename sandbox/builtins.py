"""Builtin tools: curated host-side operations (no user code runs here).

- `json_transform`: `{"data": <any>, "expression": "data.items[0].name"}` evaluated
  with the same bounded safe evaluator as flow conditions.
- `file_write` / `file_read`: `{"path": "notes/a.txt", "content"?: "..."}` inside a
  scratch directory private to (tenant, execution); paths cannot leave it.
- `http_request`: needs network access, which tenants do not have by default; it is
  refused with a message saying so (no fake response).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from domain.errors import BadUserInput, NotConfigured
from domain.flows.expressions import evaluate

MAX_FILE_BYTES = 1_000_000
MAX_FILES = 200
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class HostBuiltins:
    def __init__(self, scratch_root: Path) -> None:
        self.scratch_root = scratch_root

    async def run(
        self, tenant_id: str, execution_id: str, name: str, input: Mapping[str, Any]
    ) -> Any:
        if name == "json_transform":
            return await asyncio.to_thread(self._json_transform, input)
        if name in ("file_read", "file_write"):
            return await asyncio.to_thread(
                getattr(self, f"_{name}"), self._scratch(tenant_id, execution_id), input
            )
        if name == "http_request":
            raise NotConfigured(
                "http_request needs network access, which this tenant does not have; "
                "an operator must allow network for the tenant's tools"
            )
        raise BadUserInput(f"unknown builtin tool {name!r}")

    async def remove_scratch(self, tenant_id: str, execution_id: str) -> None:
        """Delete the scratch directory of (tenant, execution), when there is one."""
        for part in (tenant_id, execution_id):
            if not _SAFE_SEGMENT.match(part):
                return
        await asyncio.to_thread(
            shutil.rmtree, self.scratch_root / tenant_id / execution_id, ignore_errors=True
        )

    def sweep_scratch(self, older_than_seconds: float) -> int:
        """Remove scratch directories last changed more than ``older_than_seconds`` ago
        (left by a process that ended mid-run). Safe with several processes sharing the
        data dir when the age exceeds the longest a run can last (the flow timeout):
        no live run's directory is that old. Returns how many were removed."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        try:
            tenants = list(self.scratch_root.iterdir())
        except OSError:
            return 0
        for tenant in tenants:
            if tenant.is_symlink() or not tenant.is_dir():
                continue
            try:
                runs = list(tenant.iterdir())
            except OSError:
                continue
            for run in runs:
                try:
                    stale = run.lstat().st_mtime < cutoff
                except OSError:
                    continue
                if not stale:
                    continue
                if run.is_dir() and not run.is_symlink():
                    shutil.rmtree(run, ignore_errors=True)
                else:
                    run.unlink(missing_ok=True)
                removed += 1
        return removed

    def _scratch(self, tenant_id: str, execution_id: str) -> Path:
        for part in (tenant_id, execution_id):
            if not _SAFE_SEGMENT.match(part):
                raise BadUserInput("invalid scratch directory id")
        root = self.scratch_root / tenant_id / execution_id
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return root

    @staticmethod
    def _json_transform(input: Mapping[str, Any]) -> Any:
        expression = input.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            raise BadUserInput(
                "json_transform needs an `expression` string", {"expression": "is required"}
            )
        result = evaluate(expression, {"data": input.get("data")})
        try:  # tool output is stored and sent as JSON: a set (or NaN) is a tool failure
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise BadUserInput(
                f"json_transform result is not JSON (got {type(result).__name__}); "
                "return objects, lists, strings, numbers, booleans or null",
                {"expression": "result is not JSON"},
            ) from None
        return result

    @staticmethod
    def _resolve(root: Path, raw: Any) -> Path:
        if not isinstance(raw, str) or not raw or len(raw) > 512 or "\0" in raw:
            raise BadUserInput("`path` must be a relative file path", {"path": "is invalid"})
        candidate = (root / raw).resolve()
        if candidate == root.resolve() or root.resolve() not in candidate.parents:
            raise BadUserInput(
                "`path` must stay inside the scratch directory",
                {"path": "escapes the scratch directory"},
            )
        return candidate

    def _file_write(self, root: Path, input: Mapping[str, Any]) -> Any:
        target = self._resolve(root, input.get("path"))
        content = input.get("content", "")
        if not isinstance(content, str):
            raise BadUserInput("`content` must be a string", {"content": "must be a string"})
        data = content.encode()
        if len(data) > MAX_FILE_BYTES:
            raise BadUserInput(
                f"`content` is larger than {MAX_FILE_BYTES} bytes", {"content": "too large"}
            )
        if sum(1 for _ in root.rglob("*")) >= MAX_FILES:
            raise BadUserInput(f"the scratch directory holds at most {MAX_FILES} files")
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return {"path": str(target.relative_to(root.resolve())), "bytes": len(data)}

    def _file_read(self, root: Path, input: Mapping[str, Any]) -> Any:
        target = self._resolve(root, input.get("path"))
        if not target.is_file():
            raise BadUserInput(
                f"no file {input.get('path')!r} in the scratch directory",
                {"path": "does not exist"},
            )
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise BadUserInput(f"file is larger than {MAX_FILE_BYTES} bytes")
        return {"path": input.get("path"), "content": data.decode("utf-8", errors="replace")}

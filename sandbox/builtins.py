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
import os
import re
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
        return evaluate(expression, {"data": input.get("data")})

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

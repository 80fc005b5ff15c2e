"""Agents' tools as CrewAI `BaseTool`s of our own.

- `StoredTool`: a stored tool run through the domain (`CrewRun.run_tool` → `ToolRunner`,
  the sandbox), bridged from CrewAI's thread to the event loop. CrewAI's result cache is
  off for tools with side effects.
- `WorkspaceFileRead` / `WorkspaceDirectoryRead`: the builtins `file_read` and
  `directory_read`, over the execution's workspace directory (paths cannot leave it).

Imports CrewAI: import this module only after `runtime.crewai_env.load()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from pathlib import Path
from typing import Any

from crewai.tools import BaseTool
from crewai.utilities.pydantic_schema_utils import create_model_from_schema
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from domain.crew_runs import AgentTool
from domain.json_schema import schema_problems
from runtime.crewai_events import AgentRunCancelled, current_channel

MAX_FILE_BYTES = 200_000
MAX_LISTED = 500


def _no_cache(_args: Any = None, _result: Any = None) -> bool:
    return False


def _cache(_args: Any = None, _result: Any = None) -> bool:
    return True


class _AnyInput(BaseModel):
    """Arguments of a tool without an input schema: any JSON object."""

    model_config = ConfigDict(extra="allow")


def _args_model(tool: AgentTool) -> type[BaseModel]:
    schema = tool.tool.input_schema
    if (
        isinstance(schema, dict)
        and schema.get("type") == "object"
        and schema.get("properties")
        # jsonref (inside create_model_from_schema) would fetch a remote $ref: a schema
        # stored before the write-time checks gets the generic model; the domain validates
        and not schema_problems(schema)
    ):
        try:
            return create_model_from_schema(
                schema,
                model_name=f"{_identifier(tool.name)}Input",
                __config__=ConfigDict(extra="allow"),
            )
        except Exception:  # a schema pydantic cannot express: the sandbox still validates
            return _AnyInput
    return _AnyInput


def _identifier(name: str) -> str:
    return (
        "".join(
            part.capitalize() for part in "".join(c if c.isalnum() else " " for c in name).split()
        )
        or "Tool"
    )


class StoredTool(BaseTool):
    """A stored tool, run in the sandbox on behalf of the current node run."""

    _tool: AgentTool = PrivateAttr()

    @classmethod
    def of(cls, tool: AgentTool) -> StoredTool:
        made = cls(
            name=tool.name,
            description=tool.tool.description or tool.name,
            args_schema=_args_model(tool),
            cache_function=_no_cache if tool.side_effects else _cache,
        )
        made._tool = tool
        return made

    def _run(self, *args: Any, **kwargs: Any) -> str:
        channel = current_channel.get()
        if channel is None:
            raise RuntimeError("an agent tool call outside of a node run")
        channel.check_open()
        data = args[0] if args and not kwargs else kwargs
        future = asyncio.run_coroutine_threadsafe(
            channel.run.run_tool(self._tool, data), channel.loop
        )
        channel.track(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise AgentRunCancelled("the execution was cancelled") from None
        finally:
            channel.untrack(future)


class _PathInput(BaseModel):
    path: str = Field(description="A path relative to the workspace directory")


class _DirectoryInput(BaseModel):
    path: str = Field(default=".", description="A directory relative to the workspace")


def _inside(root: Path, raw: str) -> Path:
    if not isinstance(raw, str) or len(raw) > 512 or "\0" in raw:
        raise ValueError("the path must be a relative path")
    base = root.resolve()
    candidate = (base / raw.lstrip("/")).resolve()
    if candidate != base and base not in candidate.parents:
        raise ValueError("the path must stay inside the workspace directory")
    return candidate


class WorkspaceFileRead(BaseTool):
    """Reads a text file of the execution's workspace."""

    name: str = "file_read"
    description: str = "Read a text file from the workspace directory of this run."
    args_schema: type[BaseModel] = _PathInput
    workspace: Path

    def _run(self, path: str = "", **_: Any) -> str:
        _check_run()
        try:
            target = _inside(self.workspace, path)
        except ValueError as exc:
            return f"Error: {exc}"
        if not target.is_file():
            return f"Error: no file {path!r} in the workspace"
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        text = data[:MAX_FILE_BYTES].decode("utf-8", errors="replace")
        if len(data) > MAX_FILE_BYTES:
            text += f"\n… (file truncated at {MAX_FILE_BYTES} bytes)"
        return text


class WorkspaceDirectoryRead(BaseTool):
    """Lists the files of the execution's workspace (recursively)."""

    name: str = "directory_read"
    description: str = "List the files in a directory of the workspace of this run."
    args_schema: type[BaseModel] = _DirectoryInput
    workspace: Path

    def _run(self, path: str = ".", **_: Any) -> str:
        _check_run()
        try:
            target = _inside(self.workspace, path or ".")
        except ValueError as exc:
            return f"Error: {exc}"
        if not target.is_dir():
            return f"Error: no directory {path!r} in the workspace"
        base = self.workspace.resolve()
        files = sorted(
            str(p.relative_to(base))
            for p in target.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
        if not files:
            return "The directory is empty."
        listed = files[:MAX_LISTED]
        more = f"\n… and {len(files) - MAX_LISTED} more" if len(files) > MAX_LISTED else ""
        return "Files:\n" + "\n".join(f"- {f}" for f in listed) + more


def _check_run() -> None:
    channel = current_channel.get()
    if channel is not None:
        channel.check_open()


def agent_tools(tools: tuple[AgentTool, ...], workspace: Path) -> list[BaseTool]:
    """The CrewAI tools of one agent for one run."""
    made: list[BaseTool] = []
    for tool in tools:
        if tool.builtin == "file_read":
            made.append(
                WorkspaceFileRead(name=tool.name, workspace=workspace, cache_function=_no_cache)
            )
        elif tool.builtin == "directory_read":
            made.append(
                WorkspaceDirectoryRead(
                    name=tool.name, workspace=workspace, cache_function=_no_cache
                )
            )
        else:
            made.append(StoredTool.of(tool))
    return made

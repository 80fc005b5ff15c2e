"""APPROVAL nodes: what is stored about a request and its answer, and the pure rules.

An APPROVAL node (config `{"prompt", "inputSchema"?, "timeoutSeconds"?, "onTimeout"?}`)
asks a person to approve or reject. When the engine reaches one it stores an `Approval`
request (the prompt rendered with the run's data, the input schema, when it was asked and
when it expires) and the node WAITS. The answer is written on the same row by whoever
comes first, with a conditional update (`answered_at IS NULL`): a member through
`resolveApproval`, or the system when the request expired (`timed_out`). Exactly one
answer wins, whatever the number of processes; the losers get CONFLICT.

The node's output is `Approval.output()`: `{approved, input, comment, by, at}`; its
out-edges may carry `branch` "true" / "false", taken by `approved`. A timed-out request
follows `onTimeout`: "reject" (the default) completes the node as not approved, by
"system"; "fail" fails the node, and with it the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from domain.errors import BadUserInput, DomainError, LimitExceeded
from domain.json_schema import SchemaUnusable, instance_errors

SYSTEM: Final = "system"
ON_TIMEOUT_REJECT: Final = "reject"
ON_TIMEOUT_FAIL: Final = "fail"
MAX_COMMENT_CHARS: Final = 10_000
MAX_PROMPT_CHARS: Final = 100_000  # what is stored of a rendered prompt


class ApprovalTimedOut(DomainError):
    """Nobody answered in time and the node says `"onTimeout": "fail"`."""

    code = "TIMEOUT"


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What the engine stores when an APPROVAL node starts waiting."""

    node_id: str
    prompt: str
    input_schema: dict[str, Any] | None
    requested_at: datetime
    expires_at: datetime | None
    on_timeout: str = ON_TIMEOUT_REJECT


@dataclass(frozen=True, slots=True)
class Approval:
    """A stored request and, once answered, its answer."""

    execution_id: str
    node_id: str
    prompt: str
    input_schema: dict[str, Any] | None
    requested_at: datetime
    expires_at: datetime | None
    on_timeout: str = ON_TIMEOUT_REJECT
    approved: bool | None = None
    input: Any = None
    comment: str | None = None
    answered_by: str | None = None
    answered_at: datetime | None = None
    timed_out: bool = False

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    @property
    def fails_run(self) -> bool:
        """Answered by the timeout of a node that fails on timeout."""
        return self.timed_out and self.on_timeout == ON_TIMEOUT_FAIL

    def output(self) -> dict[str, Any]:
        """The node's output once answered."""
        return {
            "approved": bool(self.approved),
            "input": self.input,
            "comment": self.comment,
            "by": self.answered_by,
            "at": self.answered_at.isoformat() if self.answered_at is not None else None,
        }

    def timeout_error(self) -> ApprovalTimedOut:
        waited = ""
        if self.expires_at is not None:
            seconds = (self.expires_at - self.requested_at).total_seconds()
            waited = f" after {seconds:g} s"
        return ApprovalTimedOut(f"approval timed out{waited} without an answer")


@dataclass(frozen=True, slots=True)
class ApprovalAnswer:
    """An answer to write (checked by `check_answer`)."""

    approved: bool
    input: Any
    comment: str | None
    by: str | None


def request_for(
    node_id: str, config: dict[str, Any], prompt: Any, now: datetime
) -> ApprovalRequest:
    """The request of an APPROVAL node whose prompt template rendered to `prompt`."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)
    timeout = config.get("timeoutSeconds")
    expires = None
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
        expires = now + timedelta(seconds=float(timeout))
    schema = config.get("inputSchema")
    on_timeout = config.get("onTimeout")
    return ApprovalRequest(
        node_id=node_id,
        prompt=text[:MAX_PROMPT_CHARS],
        input_schema=schema if isinstance(schema, dict) and schema else None,
        requested_at=now,
        expires_at=expires,
        on_timeout=on_timeout if on_timeout == ON_TIMEOUT_FAIL else ON_TIMEOUT_REJECT,
    )


def check_answer(approval: Approval, input: Any, comment: str | None, max_input_bytes: int) -> None:
    """Refuse an answer whose `input` does not match the request's schema, or too big."""
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise BadUserInput(
            f"comment is longer than {MAX_COMMENT_CHARS} characters",
            {"comment": f"must be at most {MAX_COMMENT_CHARS} characters"},
        )
    try:
        size = len(json.dumps(input, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError):
        raise BadUserInput("input must be plain JSON", {"input": "must be plain JSON"}) from None
    if size > max_input_bytes:
        raise LimitExceeded(
            f"the answer's input is {size} bytes; the limit (maxExecutionInputBytes) is "
            f"{max_input_bytes} bytes",
            extensions={"limit": "maxExecutionInputBytes", "max": max_input_bytes, "size": size},
        )
    schema = approval.input_schema
    if not schema:
        return
    try:
        errors = instance_errors(schema, input, limit=100)
    except SchemaUnusable as exc:
        raise BadUserInput(f"the approval's input schema is invalid: {exc.message}") from None
    fields: dict[str, str] = {}
    for path, message in errors:
        fields.setdefault(".".join(["input", *(str(p) for p in path)]), message)
    if fields:
        raise BadUserInput("the answer's input does not match the approval's input schema", fields)


def timeout_comment() -> str:
    return "no answer before the approval expired"

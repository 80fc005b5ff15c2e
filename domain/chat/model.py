"""Chat entities and the rules that need no I/O: input checks, the message limit, the
reply lock, history trimming, cursors and the token shape."""

from __future__ import annotations

import base64
import enum
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.errors import BadUserInput, Conflict, LimitExceeded
from domain.llm import Usage
from domain.validation import MAX_NAME, Checker

DEFAULT_MESSAGE_LIMIT = 100
MAX_CONTENT_CHARS = 32_000  # one user message
MAX_SYSTEM_PROMPT_CHARS = 20_000
# Rough tokens of a text: ~4 characters per token, plus the per-message overhead of chat
# formats. Only used to keep the history inside the model's window, so it errs high.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


class ChatRole(enum.StrEnum):
    SYSTEM = "SYSTEM"
    USER = "USER"
    ASSISTANT = "ASSISTANT"


class MessageStatus(enum.StrEnum):
    STREAMING = "STREAMING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class ChatSession:
    """A conversation (PostgreSQL). `reply_id` is the assistant message being generated:
    set while a reply is pending or streaming (the session's lock against a second send),
    held by the worker `reply_owner` until `reply_expires_at` (renewed while it works)."""

    id: str
    title: str | None
    llm_provider_id: str | None
    agent_id: str | None
    system_prompt: str | None
    message_limit: int
    created_at: datetime
    message_count: int = 0
    last_seq: int = 0  # per-session message sequence: the history cursor
    reply_id: str | None = None
    reply_owner: str | None = None
    reply_expires_at: datetime | None = None
    cancel_requested: bool = False
    created_by: str | None = None
    # Read with the locked row by `ChatSessionStore.change`, never stored on it: the
    # operator suspended the session's tenant (public.tenants.status).
    tenant_suspended: bool = False

    def reply_stale(self, now: datetime) -> bool:
        """A reply whose worker stopped renewing it (died, or never picked it up)."""
        return (
            self.reply_id is not None
            and self.reply_expires_at is not None
            and self.reply_expires_at < now
        )


@dataclass(slots=True)
class ChatMessage:
    """A message (MongoDB). `seq` orders a session's messages (gaps allowed)."""

    id: str
    tenant_id: str
    session_id: str
    seq: int
    role: ChatRole
    content: str
    status: MessageStatus
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    model: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ChatToken:
    """One piece of a streamed reply. Each reply's pieces are numbered 0, 1, 2, ... and
    end with one `done` token whose delta is empty (`error` set when the reply failed)."""

    session_id: str
    message_id: str
    index: int
    delta: str
    done: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"s": self.session_id, "m": self.message_id, "i": self.index}
        out["d"] = self.delta
        if self.done:
            out["x"] = 1
        if self.error is not None:
            out["e"] = self.error
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatToken:
        return cls(
            session_id=str(data["s"]),
            message_id=str(data["m"]),
            index=int(data["i"]),
            delta=str(data.get("d", "")),
            done=bool(data.get("x")),
            error=data.get("e"),
        )


@dataclass(frozen=True, slots=True)
class ChatSessionInput:
    title: str | None = None
    llm_provider_id: str | None = None
    agent_id: str | None = None
    message_limit: int | None = None
    system_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyRef:
    """What a worker needs to generate one reply."""

    tenant_id: str
    tenant_schema: str
    session_id: str
    message_id: str


@dataclass(slots=True)
class Reservation:
    """Sequences and ids reserved for one exchange (user message + its reply)."""

    user_id: str
    user_seq: int
    reply_id: str
    reply_seq: int
    stale_reply: str | None = None  # an abandoned reply this send found and released


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    role: ChatRole
    content: str


@dataclass(frozen=True, slots=True)
class ChatLimits:
    default_message_limit: int = DEFAULT_MESSAGE_LIMIT
    max_message_limit: int = 10_000
    max_content_chars: int = MAX_CONTENT_CHARS
    reply_lease_seconds: float = 30.0
    # A reply no worker has picked up yet may wait this many leases in the queue.
    pending_leases: float = 4.0
    default_context_tokens: int = 8192
    history_max_messages: int = 500  # read at most this many stored messages per reply


def validate_session(data: ChatSessionInput, limits: ChatLimits) -> ChatSessionInput:
    check = Checker("input.")
    title = check.text("title", data.title, required=False, max_len=MAX_NAME)
    prompt = data.system_prompt
    if prompt is not None:
        prompt = prompt.strip() or None
        check.check(
            "systemPrompt",
            prompt is None or len(prompt) <= MAX_SYSTEM_PROMPT_CHARS,
            f"must be at most {MAX_SYSTEM_PROMPT_CHARS} characters",
        )
    bound = [f for f in (data.llm_provider_id, data.agent_id) if f is not None]
    if len(bound) != 1:
        message = "set exactly one of llmProviderId and agentId"
        check.fail("llmProviderId", message)
        check.fail("agentId", message)
    limit = data.message_limit
    if limit is None:
        limit = min(limits.default_message_limit, limits.max_message_limit)
    check.check(
        "messageLimit",
        2 <= limit <= limits.max_message_limit,
        f"must be between 2 and {limits.max_message_limit} (this deployment's maximum)",
    )
    check.raise_if_any()
    return ChatSessionInput(title or None, data.llm_provider_id, data.agent_id, limit, prompt)


def validate_content(content: str, limits: ChatLimits) -> str:
    if not content.strip():
        raise BadUserInput("the message is empty", {"content": "must not be empty"})
    if len(content) > limits.max_content_chars:
        raise BadUserInput(
            f"the message is longer than {limits.max_content_chars} characters",
            {"content": f"must be at most {limits.max_content_chars} characters"},
        )
    return content


def reserve(
    session: ChatSession, now: datetime, limits: ChatLimits, owner_pending: str | None = None
) -> Reservation:
    """Take the next exchange of `session` (mutated in place; the caller stores it in the
    same transaction): refuses a second send while a reply streams, and a send that would
    pass the message limit. An abandoned reply (its worker stopped renewing) is released."""
    if session.llm_provider_id is None and session.agent_id is None:
        raise Conflict(
            "this chat session's model or agent was deleted; start a new session to go on"
        )
    stale: str | None = None
    if session.reply_id is not None:
        if not session.reply_stale(now):
            raise Conflict(
                "a reply is still streaming in this session: wait for it to finish "
                "(its final token has done: true) or cancel it with cancelChatReply",
                extensions={"messageId": session.reply_id},
            )
        stale = session.reply_id
    if session.message_count + 2 > session.message_limit:
        raise LimitExceeded(
            f"this chat session holds at most {session.message_limit} messages and has "
            f"{session.message_count}; a message and its reply need 2 more: start a new "
            "session (createChatSession) to continue the conversation",
            extensions={
                "messageLimit": session.message_limit,
                "messageCount": session.message_count,
            },
        )
    user_seq, reply_seq = session.last_seq + 1, session.last_seq + 2
    reservation = Reservation(new_id(), user_seq, new_id(), reply_seq, stale)
    session.last_seq = reply_seq
    session.message_count += 2
    session.reply_id = reservation.reply_id
    session.reply_owner = owner_pending
    session.reply_expires_at = now + timedelta(
        seconds=limits.reply_lease_seconds * limits.pending_leases
    )
    session.cancel_requested = False
    return reservation


def release(session: ChatSession, reply_id: str) -> bool:
    """Clear the reply lock when it is still `reply_id`'s."""
    if session.reply_id != reply_id:
        return False
    session.reply_id = None
    session.reply_owner = None
    session.reply_expires_at = None
    session.cancel_requested = False
    return True


def undo_reservation(session: ChatSession, r: Reservation) -> bool:
    """Give back an exchange whose messages could not be stored. Its sequences stay used
    (a message may have reached the store after all: it must never be shadowed)."""
    if not release(session, r.reply_id):
        return False
    session.message_count = max(0, session.message_count - 2)
    return True


# -- history ----------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    return TOKENS_PER_MESSAGE + (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def reply_budget(window: int) -> int:
    """Tokens kept free for the reply: a quarter of the window, at most 4096."""
    return min(max(window // 4, 16), 4096)


def fit_history(
    system_prompt: str | None, messages: Sequence[HistoryMessage], window: int
) -> list[HistoryMessage]:
    """The newest messages (oldest first) that fit `window` tokens with the system prompt
    and room for the reply. The system prompt is always kept, and so is the last message
    (the one being answered), even when alone they pass the window: the provider then
    says so, which is clearer than an empty prompt."""
    budget = window - reply_budget(window)
    if system_prompt:
        budget -= estimate_tokens(system_prompt)
    kept: list[HistoryMessage] = []
    for message in reversed(messages):
        cost = estimate_tokens(message.content)
        if kept and cost > budget:
            break
        kept.append(message)
        budget -= cost
    kept.reverse()
    return kept


def to_llm_messages(
    system_prompt: str | None, history: Sequence[HistoryMessage]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for m in history:
        out.append(
            {"role": "assistant" if m.role is ChatRole.ASSISTANT else "user", "content": m.content}
        )
    return out


def agent_task(system_prompt: str | None, history: Sequence[HistoryMessage]) -> str:
    """An agent answers one task: the last user message first (what to do), then the
    conversation before it as context, oldest first."""
    *earlier, last = history
    parts = [last.content.strip()]
    if system_prompt:
        parts.append(f"Instructions for this conversation:\n{system_prompt}")
    if earlier:
        lines = [
            f"{'Assistant' if m.role is ChatRole.ASSISTANT else 'User'}: {m.content.strip()}"
            for m in earlier
        ]
        parts.append("The conversation so far (oldest first):\n" + "\n".join(lines))
    return "\n\n".join(parts)


def split_reply(text: str, size: int = 24) -> list[str]:
    """Pieces of a finished text to stream (joined, they give `text`)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or []


# -- cursors -----------------------------------------------------------------------------


MAX_SEQ = 2**63


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps(["m", seq]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arg: str = "before") -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, seq = json.loads(base64.urlsafe_b64decode(padded.encode()))
        # Bounded by the stores' 64-bit integers: a larger number is a forgery, not a
        # question for the message store.
        if kind != "m" or type(seq) is not int or not 0 <= seq < MAX_SEQ:
            raise ValueError(cursor)
        return seq
    except Exception:
        raise BadUserInput("invalid cursor", {arg: "is not a cursor returned by this API"})


@dataclass(frozen=True, slots=True)
class MessagePage:
    """Newest-last page of a backwards walk: `items` oldest to newest."""

    items: list[ChatMessage] = field(default_factory=list)
    has_previous_page: bool = False


def utcnow() -> datetime:
    return datetime.now(UTC)

"""The *scripted* local model: an OpenAI-compatible endpoint served by the API itself.

It is not a language model. Replies are derived deterministically from the prompt, so a
newcomer can run an AI flow offline right after `register`, and tests can drive LiteLLM
and CrewAI over real HTTP with predictable answers. Every response says so
(`system_fingerprint`, `owned_by` and the `X-Crewgraph-Model` header are "scripted").

Routes (mounted at `/local-llm/v1`): `POST /chat/completions` (streaming SSE or not),
`GET /models`, and, only when the request log is switched on, `GET /_requests` (the log
the tests read). The log is off by default: it holds the prompts of every tenant and the
route has no authentication. The rules of the script are in `script_reply`; nothing is
written to disk. Anyone who reaches the API reaches this endpoint, so a malformed request
is a 400 (never a 500) and the number of requests in progress is bounded (a 429 beyond).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

FINGERPRINT = "crewgraph-scripted"
# Keys the endpoint accepts: none at all, or one of these placeholders. Any other key is
# refused with 401, and (like some real providers) the refusal echoes the key, which is
# what the key-scrubbing of the gateway is tested against.
ACCEPTED_KEYS = frozenset({"", "scripted", "no-key"})
RUN_HEADER = "x-crewgraph-run"  # correlates requests with an execution in the log
NODE_HEADER = "x-crewgraph-node"

SLOW_TOKENS = 50
SLOW_TOKEN_SECONDS = 0.2
HANG_SECONDS = 120.0
# Requests in progress at once (streams and hangs hold theirs until they end).
MAX_CONCURRENT_REQUESTS = 256
LOG_SIZE = 1000
_LOG_TEXT = 500
_LOG_TOOLS = 20


@dataclass(frozen=True, slots=True)
class ScriptedModel:
    id: str
    description: str
    token_delay: float = 0.0
    fixed_tokens: int | None = None
    fail_status: int | None = None
    hang: bool = False


MODELS: dict[str, ScriptedModel] = {
    m.id: m
    for m in (
        ScriptedModel("scripted", "deterministic replies, streamed at once"),
        ScriptedModel(
            "scripted-slow",
            f"{SLOW_TOKENS} tokens, one per {int(SLOW_TOKEN_SECONDS * 1000)} ms",
            token_delay=SLOW_TOKEN_SECONDS,
            fixed_tokens=SLOW_TOKENS,
        ),
        ScriptedModel("scripted-error-500", "always fails with HTTP 500", fail_status=500),
        ScriptedModel("scripted-error-429", "always rate-limited (HTTP 429)", fail_status=429),
        ScriptedModel("scripted-hang", "answers nothing for two minutes (timeouts)", hang=True),
    )
}


# -- the script -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScriptedTurn:
    """What the model answers: text, or tool calls (OpenAI shape, arguments as JSON text)."""

    content: str | None
    tool_calls: tuple[dict[str, Any], ...] = ()


_SAY = re.compile(r"\bSAY:[ \t]*(?P<text>[^\n]*)")
_USE_TOOL = re.compile(
    r"\buse\s+(?:the\s+)?tool\s+[`'\"]?(?P<a>[\w.\-]+)[`'\"]?"
    r"|\buse\s+the\s+[`'\"]?(?P<b>[\w.\-]+)[`'\"]?\s+tool\b",
    re.IGNORECASE,
)
_WITH = re.compile(r"\s*(?:with\s*(?:input|arguments|args)?\s*:?\s*)", re.IGNORECASE)
_TASK = re.compile(r"Current Task:\s*(?P<task>.*?)(?:\n\s*\n|\nBegin!|$)", re.S)
_REACT_TOOLS = re.compile(r"only one name of \[(?P<names>[^\]]*)\]")
_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"\s*\S+")


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
        )
    return ""


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True, slots=True)
class _ToolAsk:
    name: str  # as the request spells it
    arguments: dict[str, Any]


def _tool_asks(text: str, offered: Mapping[str, str]) -> list[_ToolAsk]:
    """`use tool NAME [with {json}]` / `use the NAME tool [with {json}]`, offered ones only."""
    asks: list[_ToolAsk] = []
    for m in _USE_TOOL.finditer(text):
        wanted = _norm(m.group("a") or m.group("b") or "")
        if wanted not in offered:
            continue
        arguments: dict[str, Any] = {}
        rest = text[m.end() :]
        w = _WITH.match(rest)
        tail = rest[w.end() :] if w else rest.lstrip()
        if tail.startswith("{"):
            try:
                value, _ = json.JSONDecoder().raw_decode(tail)
            except ValueError:
                value = None
            if isinstance(value, dict):
                arguments = value
        asks.append(_ToolAsk(offered[wanted], arguments))
    return asks


def _native_tools(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    names: dict[str, str] = {}
    for tool in tools or ():
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if isinstance(name, str) and name:
            names[_norm(name)] = name
    return names


def _default_arguments(tools: Sequence[Mapping[str, Any]] | None, name: str) -> dict[str, Any]:
    """Required string/number/boolean parameters filled with placeholder values."""
    for tool in tools or ():
        fn = tool.get("function") or {}
        if fn.get("name") != name:
            continue
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        args: dict[str, Any] = {}
        for key in params.get("required") or []:
            kind = str((props.get(key) or {}).get("type"))
            args[key] = {"integer": 1, "number": 1, "boolean": True}.get(kind, "scripted")
        return args
    return {}


def _summary(text: str, limit: int = 24) -> str:
    task = _TASK.search(text)
    source = task.group("task") if task else text
    words = _WORD.findall(source)
    return " ".join(words[:limit]) + (" …" if len(words) > limit else "")


def script_reply(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    json_mode: bool = False,
) -> ScriptedTurn:
    """The scripted answer to a chat request. Rules, in order:

    1. Tools: when the request offers tools (native `tools`, or CrewAI's ReAct prompt
       "only one name of [a, b]") and a user/system message says `use tool NAME` or
       `use the NAME tool` (optionally followed by `with {json arguments}`), the model
       calls the first such tool it has not called yet in this conversation: a native
       `tool_calls` entry, or `Action: NAME / Action Input: {...}` text in ReAct mode.
    2. Text: `SAY: text` (rest of the line, in the last user message that has one, else
       any system/user message) is answered verbatim; otherwise
       "Scripted reply: <the first words of the task or last user message>", plus
       "(after NAME: <result>)" when tools already answered.
    3. JSON mode (`response_format` json_object/json_schema): a `SAY:` text is returned
       verbatim (valid JSON or not: the caller's parsing is tested with it); otherwise
       `{"reply": ..., "words": n}`.
    4. In ReAct mode the text is wrapped as `Thought: ...` / `Final Answer: ...`.
    """
    texts = [(str(m.get("role", "")), _text(m)) for m in messages]
    instructions = "\n".join(t for role, t in texts if role in ("user", "system"))
    last_user = next((t for role, t in reversed(texts) if role == "user"), "")
    native = _native_tools(tools)
    react_match = _REACT_TOOLS.search(instructions)
    react = {
        _norm(n.strip()): n.strip()
        for n in (react_match.group("names").split(",") if react_match else [])
        if n.strip()
    }
    called: list[str] = []
    results: list[tuple[str, str]] = []
    call_names: dict[str, str] = {}
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                called.append(_norm(str(fn.get("name", ""))))
                call_names[str(call.get("id"))] = str(fn.get("name", ""))
            text = _text(m)
            for action in re.finditer(r"Action:\s*([\w.\-]+)", text):
                called.append(_norm(action.group(1)))
            obs = re.search(r"Observation:\s*(.*)", text, re.S)
            if obs and called:
                results.append((called[-1], obs.group(1).strip()))
        elif role == "tool":
            name = str(m.get("name") or call_names.get(str(m.get("tool_call_id")), "tool"))
            results.append((_norm(name), _text(m).strip()))
    # Tool calls are only made when offered; ReAct format only when no native tools.
    offered = native or react
    for ask in _tool_asks(instructions, offered):
        if _norm(ask.name) in called:
            continue
        args = ask.arguments or _default_arguments(tools, ask.name)
        if native:
            digest = hashlib.sha256(f"{ask.name}:{len(messages)}".encode()).hexdigest()[:12]
            call = {
                "id": f"call_{digest}",
                "type": "function",
                "function": {"name": ask.name, "arguments": json.dumps(args)},
            }
            return ScriptedTurn(None, (call,))
        return ScriptedTurn(
            f"Thought: I should use the {ask.name} tool.\n"
            f"Action: {ask.name}\nAction Input: {json.dumps(args)}"
        )

    say = _SAY.search(last_user) or next(
        (found for _, t in reversed(texts) if (found := _SAY.search(t)) is not None), None
    )
    if say is not None:
        text = say.group("text").strip()
    else:
        text = f"Scripted reply: {_summary(last_user)}"
        for name, result in results:
            text += f" (after {name}: {_summary(result, 40)})"
        if json_mode:
            text = json.dumps({"reply": text, "words": len(_WORD.findall(last_user))})
    if react_match or "Final Answer:" in instructions:
        text = f"Thought: I now can give a great answer\nFinal Answer: {text}"
    return ScriptedTurn(text)


def count_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens as the scripted model counts them: words plus 4 per message."""
    return sum(len(_WORD.findall(_text(m))) + 4 for m in messages)


def split_tokens(text: str) -> list[str]:
    """Stream pieces: each word with the whitespace before it (joined, they give `text`)."""
    pieces = _TOKEN.findall(text)
    rest = text[sum(len(p) for p in pieces) :]
    if rest:
        pieces.append(rest)
    return pieces


# -- the request log ----------------------------------------------------------------------


@dataclass(slots=True)
class LoggedRequest:
    """One request as the model saw it (never the key)."""

    id: int
    at: str
    model: str
    stream: bool
    run: str | None
    node: str | None
    user: str | None
    messages: int
    tools: list[str]
    last_user: str
    status: str = "running"  # running | completed | disconnected | failed
    http_status: int = 200
    tokens_sent: int = 0
    finished_at: str | None = None


@dataclass
class RequestLog:
    """The last `size` requests, in memory, per process (each entry is bounded too)."""

    size: int = LOG_SIZE
    _items: deque[LoggedRequest] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, entry_kw: dict[str, Any]) -> LoggedRequest:
        entry = LoggedRequest(id=next(self._ids), at=_now(), **entry_kw)
        self._items.append(entry)
        while len(self._items) > self.size:
            self._items.popleft()
        return entry

    def find(
        self, *, run: str | None = None, model: str | None = None, node: str | None = None
    ) -> list[LoggedRequest]:
        return [
            e
            for e in self._items
            if (run is None or e.run == run or e.user == run)
            and (model is None or e.model == model)
            and (node is None or e.node == node)
        ]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _finish(entry: LoggedRequest, status: str) -> None:
    entry.status = status
    entry.finished_at = _now()


# -- HTTP ---------------------------------------------------------------------------------


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    headers = {"X-Crewgraph-Model": "scripted"}
    if status == 429:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


def _key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else auth.strip()


def _chunk(
    ident: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None
) -> str:
    body = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


class ScriptedEndpoint:
    """The routes, with their request log (None: not kept, `/_requests` is a 404)."""

    def __init__(
        self, *, request_log: bool = False, max_concurrent: int = MAX_CONCURRENT_REQUESTS
    ) -> None:
        self.log = RequestLog() if request_log else None
        self._max_concurrent = max_concurrent

    def app(self) -> ASGIApp:
        routes = [
            Route("/chat/completions", self.chat, methods=["POST"]),
            Route("/models", self.models, methods=["GET"]),
        ]
        if self.log is not None:
            routes.append(Route("/_requests", self.requests, methods=["GET"]))
        return _Bounded(Starlette(routes=routes), self._max_concurrent)

    async def models(self, _: Request) -> Response:
        data = [
            {
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": FINGERPRINT,
                "description": m.description,
            }
            for m in MODELS.values()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def requests(self, request: Request) -> Response:
        assert self.log is not None  # the route exists only with a log
        q = request.query_params
        found = self.log.find(
            run=q.get("tag") or q.get("run"), model=q.get("model"), node=q.get("node")
        )
        return JSONResponse({"requests": [asdict(e) for e in found]})

    async def chat(self, request: Request) -> Response:
        try:
            return await self._chat(request)
        except (TypeError, AttributeError, KeyError, ValueError, RecursionError):
            # A request shaped unlike OpenAI's (a tool that is a string, a message whose
            # tool_calls is a number...): the client's fault.
            return _error(400, "malformed chat request", "invalid_request_error")

    async def _chat(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            return _error(400, "request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' must be a list", "invalid_request_error")
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        model_name = str(body.get("model", ""))
        tools = body.get("tools") if isinstance(body.get("tools"), list) else None
        stream = bool(body.get("stream"))
        user = body.get("user") if isinstance(body.get("user"), str) else None
        last_user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        fields: dict[str, Any] = {
            "model": model_name[:_LOG_TEXT],
            "stream": stream,
            "run": (request.headers.get(RUN_HEADER) or user or "")[:_LOG_TEXT] or None,
            "node": (request.headers.get(NODE_HEADER) or "")[:_LOG_TEXT] or None,
            "user": user[:_LOG_TEXT] if user else None,
            "messages": len(messages),
            "tools": sorted(_native_tools(tools).values())[:_LOG_TOOLS],
            "last_user": last_user[:_LOG_TEXT],
        }
        entry = self.log.add(fields) if self.log is not None else LoggedRequest(0, "", **fields)
        key = _key(request)
        if key not in ACCEPTED_KEYS:
            entry.http_status = 401
            _finish(entry, "failed")
            return _error(
                401,
                f"Incorrect API key provided: {key}. The scripted model accepts no key "
                "or the key 'scripted'.",
                "invalid_request_error",
                "invalid_api_key",
            )
        model = MODELS.get(model_name)
        if model is None:
            entry.http_status = 404
            _finish(entry, "failed")
            return _error(
                404,
                f"The model '{model_name}' does not exist; scripted models: " + ", ".join(MODELS),
                "invalid_request_error",
                "model_not_found",
            )
        if model.fail_status is not None:
            entry.http_status = model.fail_status
            _finish(entry, "failed")
            kind = "rate_limit_error" if model.fail_status == 429 else "server_error"
            return _error(model.fail_status, f"scripted failure (HTTP {model.fail_status})", kind)
        if model.hang:
            try:
                await _sleep_unless_disconnected(request, HANG_SECONDS)
            finally:
                _finish(entry, "disconnected")
            return _error(504, "scripted hang ended", "server_error")

        fmt = body.get("response_format")
        json_mode = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
        turn = script_reply(messages, tools, json_mode=json_mode)
        pieces = split_tokens(turn.content or "")
        if model.fixed_tokens is not None and turn.content is not None:
            pieces = list(
                itertools.islice(itertools.cycle(pieces or [" scripted"]), model.fixed_tokens)
            )
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        truncated = isinstance(limit, int) and 0 < limit < len(pieces)
        if isinstance(limit, int) and truncated:
            pieces = pieces[:limit]
        prompt_tokens = count_tokens(messages)
        completion_tokens = len(pieces) + sum(
            len(_WORD.findall(c["function"]["arguments"])) + 1 for c in turn.tool_calls
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        ident = (
            "chatcmpl-scripted-"
            + hashlib.sha256(f"{entry.id}:{model_name}".encode()).hexdigest()[:16]
        )
        created = int(time.time())
        finish = "tool_calls" if turn.tool_calls else "length" if truncated else "stop"
        headers = {"X-Crewgraph-Model": "scripted"}
        if stream:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            return StreamingResponse(
                self._stream(
                    entry,
                    model,
                    turn,
                    pieces,
                    usage,
                    include_usage,
                    ident,
                    created,
                    finish,
                ),
                media_type="text/event-stream",
                headers=headers,
            )
        content = ""
        for piece in pieces:
            if model.token_delay:
                if not await _sleep_unless_disconnected(request, model.token_delay):
                    _finish(entry, "disconnected")
                    return Response(status_code=499)
            content += piece
            entry.tokens_sent += 1
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if turn.tool_calls:
            message["tool_calls"] = list(turn.tool_calls)
        _finish(entry, "completed")
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                ],
                "usage": usage,
            },
            headers=headers,
        )

    async def _stream(
        self,
        entry: LoggedRequest,
        model: ScriptedModel,
        turn: ScriptedTurn,
        pieces: list[str],
        usage: dict[str, int],
        include_usage: bool,
        ident: str,
        created: int,
        finish: str,
    ) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; the log says so.
        done = False
        try:
            yield _chunk(ident, model.id, created, {"role": "assistant", "content": ""})
            for i, piece in enumerate(pieces):
                if i and model.token_delay:
                    await asyncio.sleep(model.token_delay)
                yield _chunk(ident, model.id, created, {"content": piece})
                entry.tokens_sent += 1
            if turn.tool_calls:
                calls = [{"index": i, **c} for i, c in enumerate(turn.tool_calls)]
                yield _chunk(ident, model.id, created, {"tool_calls": calls})
            yield _chunk(ident, model.id, created, {}, finish)
            if include_usage:
                body = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model.id,
                    "system_fingerprint": FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
            done = True
        finally:
            _finish(entry, "completed" if done else "disconnected")


async def _sleep_unless_disconnected(request: Request, seconds: float) -> bool:
    """Sleep in small steps; False as soon as the client has gone."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, 0.1))
        if await request.is_disconnected():
            return False


class _Bounded:
    """At most `limit` requests in progress; the rest get a 429 at once. Counted around
    the whole ASGI call, so a streamed reply holds its place until it ends or the client
    goes, whichever way the stream is torn down."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self.in_progress >= self._limit:
            busy = _error(
                429,
                f"the scripted model serves at most {self._limit} requests at once",
                "rate_limit_error",
            )
            await busy(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self._app(scope, receive, send)
        finally:
            self.in_progress -= 1


def scripted_app(endpoint: ScriptedEndpoint | None = None, *, request_log: bool = False) -> ASGIApp:
    """The ASGI app to mount at `/local-llm/v1` (`request_log`: keep and serve the log)."""
    return (endpoint or ScriptedEndpoint(request_log=request_log)).app()

"""`LlmClient` over LiteLLM: one call against one resolved target.

It streams when asked, applies the target's timeout and retries, reads usage and the
cost (LiteLLM's bundled price map; None for unknown models), and turns every failure
into `LlmCallFailed` with a kind (the domain decides about failover) and a message
scrubbed of the key. Failover, recording and key decryption are not done here.

LiteLLM takes seconds to import, so it is imported on first use, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import ipaddress
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import runtime  # noqa: F401  # offline defaults, before LiteLLM is imported
from domain.egress import EgressPolicy, EgressRefused, IpAddress, literal_address
from domain.llm import (
    FailureKind,
    LlmCallFailed,
    LlmReply,
    LlmRequest,
    LlmTarget,
    TokenCallback,
    Usage,
)

log = logging.getLogger("crewgraph.llm")

RUN_HEADER = "X-Crewgraph-Run"
NODE_HEADER = "X-Crewgraph-Node"
# OpenAI-compatible servers without keys still need some bearer for the SDK.
NO_KEY = "no-key"
_OPENAI_LIKE = frozenset({"openai", "hosted_vllm", "openai_like", "custom_openai", "lm_studio"})
_MAX_MESSAGE = 1000
_BACKOFF_SECONDS = 0.5
# Where LiteLLM sends a provider that has no base URL, when that is not a public API.
_LOCAL_DEFAULT_BASES = {
    "ollama": "http://localhost:11434",
    "ollama_chat": "http://localhost:11434",
    "llamafile": "http://127.0.0.1:8080/v1",
}

_litellm: Any = None
_import_lock = threading.Lock()


class _EgressScope:
    """The egress state of one model call: hosts already checked, and the refusal (if
    any) of a request LiteLLM or the OpenAI SDK tried to make (their exceptions wrap ours).
    """

    def __init__(self, client: LiteLlmClient) -> None:
        self.client = client
        self.vetted: set[tuple[str, int]] = set()
        self.refused: str | None = None

    async def check(self, url: str) -> None:
        try:
            where = self.client._egress.target(url)
        except EgressRefused as refused:
            self.refused = str(refused)
            raise _Refused(self.refused) from None
        if (where.host, where.port) in self.vetted:
            return
        try:
            vetted = await self.client._check_url(url)
        except LlmCallFailed as failed:
            self.refused = str(failed).removeprefix("egress refused: ")
            raise _Refused(self.refused) from None
        if vetted is not None:
            self.vetted.add(vetted)


class _Refused(ConnectionError):
    """Raised inside the HTTP stack; `_once` reports the scope's refusal instead."""


_SCOPE: contextvars.ContextVar[_EgressScope | None] = contextvars.ContextVar(
    "crewgraph_egress_scope", default=None
)


def _guard_httpx() -> None:
    """Every request httpx sends during a model call goes through the egress policy, and
    redirects are not followed.

    LiteLLM reaches providers through httpx: the OpenAI SDK's client and LiteLLM's own
    handler (whose aiohttp transport sits under an `httpx.AsyncClient`, and which follows
    redirects by sending each hop itself). Both follow redirects by default, so a public
    host could bounce a call to 169.254.169.254. `AsyncClient.send` is wrapped once: inside
    a call (`_SCOPE` set) each request's host is checked (resolved when it is not the
    call's own host), `follow_redirects` is off, and a redirect answer is a refusal.
    Outside a call it changes nothing."""
    import httpx

    original = httpx.AsyncClient.send
    if getattr(original, "_crewgraph_egress", False):
        return

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        scope = _SCOPE.get()
        if scope is None:
            return await original(self, request, **kwargs)
        await scope.check(str(request.url))
        kwargs["follow_redirects"] = False
        response = await original(self, request, **kwargs)
        if response.is_redirect:
            await response.aclose()
            scope.refused = (
                f"the provider answered {response.status_code} with a redirect; "
                "redirects are not followed"
            )
            raise _Refused(scope.refused)
        return response

    send._crewgraph_egress = True  # type: ignore[attr-defined]
    httpx.AsyncClient.send = send  # type: ignore[method-assign]


def _load() -> Any:
    global _litellm
    with _import_lock:
        if _litellm is None:
            module: Any = importlib.import_module("litellm")
            module.suppress_debug_info = True  # no "Give Feedback" banners on stdout
            module.telemetry = False
            module.drop_params = True  # providers that lack a knob ignore it
            _guard_httpx()
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                logging.getLogger(name).setLevel(logging.WARNING)
            _litellm = module
    return _litellm


async def load_litellm() -> Any:
    """LiteLLM, imported once in a thread so the event loop keeps serving."""
    if _litellm is not None:
        return _litellm
    return await asyncio.to_thread(_load)


def scrub(text: str, secret: str | None) -> str:
    """The text without the key (and without LiteLLM's class-name prefixes), bounded.

    Providers echo a key as they received it: trimmed, JSON-escaped inside an error body,
    or as a Python repr in an HTTP library's message; every spelling is removed."""
    if secret:
        spellings = {
            secret,
            secret.strip(),
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
            repr(secret)[1:-1],
        }
        for spelling in sorted((s for s in spellings if s), key=len, reverse=True):
            text = text.replace(spelling, "***")
    text = re.sub(r"^(?:litellm\.\w+:\s*)?(?:\w+Error:\s*)?(?:\w+Exception - )?", "", text.strip())
    return text[:_MAX_MESSAGE]


def classify(exc: BaseException, litellm: Any) -> FailureKind:
    """Which kind of failure a LiteLLM/httpx/OS exception is."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if _connection_failed(exc):
        return "network"  # LiteLLM reports these as HTTP 500; the chain says otherwise
    checks: list[tuple[str, FailureKind]] = [
        ("Timeout", "timeout"),
        ("RateLimitError", "rate_limited"),
        ("AuthenticationError", "auth"),
        ("PermissionDeniedError", "auth"),
        ("ContextWindowExceededError", "bad_request"),
        ("ContentPolicyViolationError", "bad_request"),
        ("NotFoundError", "bad_request"),
        ("UnprocessableEntityError", "bad_request"),
        ("BadRequestError", "bad_request"),
        ("InternalServerError", "server"),
        ("ServiceUnavailableError", "server"),
        ("BadGatewayError", "server"),
        ("APIConnectionError", "network"),
    ]
    for name, kind in checks:
        cls = getattr(litellm, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return kind
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        if status == 429:
            return "rate_limited"
        if status in (401, 403):
            return "auth"
        if status == 408:
            return "timeout"
        if status >= 500:
            return "server"
        if status >= 400:
            return "bad_request"
    if isinstance(exc, OSError | ConnectionError):
        return "network"
    return "network" if "connect" in type(exc).__name__.lower() else "server"


def _connection_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        name = type(seen).__name__
        if name in ("APIConnectionError", "ConnectError", "ConnectTimeout") or isinstance(
            seen, ConnectionError
        ):
            return name != "APITimeoutError"
        if str(seen).strip().rstrip(".").endswith("Connection error"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def model_name(target: LlmTarget) -> str:
    """LiteLLM's "provider/model" spelling (kept when the model already carries it)."""
    if target.model.startswith(target.provider + "/"):
        return target.model
    return f"{target.provider}/{target.model}"


def cost_of(litellm: Any, target: LlmTarget, prompt: int, completion: int) -> float | None:
    """USD from LiteLLM's local price map; None when the model has no price there."""
    try:
        p, c = litellm.cost_per_token(
            model=target.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            custom_llm_provider=target.provider,
        )
    except Exception:
        return None
    return float(p) + float(c)


class LiteLlmClient:
    """The `LlmClient` port for every provider LiteLLM knows."""

    def __init__(
        self,
        *,
        backoff_seconds: float = _BACKOFF_SECONDS,
        egress: EgressPolicy | None = None,
        trusted_base_url: Callable[[], str | None] | None = None,
    ) -> None:
        """`egress` judges every call's host right before it is made (None: the laptop
        policy); `trusted_base_url` is this server's own scripted model, always allowed."""
        self._backoff = backoff_seconds
        self._egress = egress or EgressPolicy()
        self._trusted = trusted_base_url or (lambda: None)

    async def warm(self) -> None:
        """Import LiteLLM ahead of the first call (start-up calls this in the background)."""
        await load_litellm()

    async def complete(
        self, target: LlmTarget, request: LlmRequest, on_token: TokenCallback | None = None
    ) -> LlmReply:
        litellm = await load_litellm()
        attempt = 0
        while True:
            streamed = [False]
            try:
                return await self._once(litellm, target, request, on_token, streamed)
            except LlmCallFailed as failed:
                # A retry after output already reached the caller would repeat it.
                if attempt >= target.max_retries or not failed.fails_over or streamed[0]:
                    raise
                attempt += 1
                await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), 8.0))

    async def _once(
        self,
        litellm: Any,
        target: LlmTarget,
        request: LlmRequest,
        on_token: TokenCallback | None,
        streamed: list[bool],
    ) -> LlmReply:
        scope = _EgressScope(self)
        vetted = await self._check_url(target.base_url or _LOCAL_DEFAULT_BASES.get(target.provider))
        if vetted is not None:
            scope.vetted.add(vetted)
        kwargs = self._kwargs(target, request)
        token = _SCOPE.set(scope)  # every HTTP request of this call is checked (`_guard`)
        try:
            if on_token is None:
                response = await litellm.acompletion(**kwargs)
            else:
                response = await self._stream(litellm, kwargs, on_token, streamed)
        except LlmCallFailed:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = _failure(exc, litellm, target)
        else:
            return self._reply(litellm, target, response)
        finally:
            _SCOPE.reset(token)
        if scope.refused is not None:
            # LiteLLM wraps whatever the guard raised: the refusal itself is what counts.
            failure = LlmCallFailed("bad_request", f"egress refused: {scope.refused}")
        # Raised outside the handler: LiteLLM's exception (its message, its request with
        # the key in a header) is not even kept as `__context__` of what we raise.
        raise failure

    async def _check_url(self, url: str | None) -> tuple[str, int] | None:
        """The egress policy over a host this call goes to, resolved now (each attempt):
        its (host, port), or None when it is not judged (a provider's built-in public API).

        Refusals are `bad_request` (no failover, no retry) worded "egress refused: ...".
        The HTTP stack resolves the name again when it connects; see docs/ai-runtime.md
        ("Outbound calls") for what that leaves open."""
        if url is None:
            return None  # LiteLLM's built-in public endpoint of the provider
        policy = self._egress
        try:
            where = policy.target(url)
            trusted = self._trusted()
            if trusted and url.rstrip("/") == trusted.rstrip("/"):
                return where.host, where.port  # this server's own scripted model
            if not policy.host_allowed(where.host):
                policy.check_addresses(where.host, await self._resolve(where.host, where.port))
        except EgressRefused as refused:
            raise LlmCallFailed("bad_request", f"egress refused: {refused}") from None
        return where.host, where.port

    async def _resolve(self, host: str, port: int) -> list[IpAddress]:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                self._egress.resolve_timeout_seconds,
            )
        except TimeoutError:
            raise LlmCallFailed("network", f"cannot reach {host}: name lookup timed out") from None
        except OSError as exc:
            raise LlmCallFailed("network", f"cannot reach {host}: {exc}") from None
        found: list[IpAddress] = []
        for info in infos:
            try:
                found.append(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
            except ValueError:
                continue
        return found

    def _kwargs(self, target: LlmTarget, request: LlmRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": model_name(target),
            "messages": [dict(m) for m in request.messages],
            "timeout": target.timeout_seconds,
            "max_retries": 0,  # retries are ours (see `complete`), not the SDK's
            "num_retries": 0,
        }
        if target.base_url:
            kwargs["api_base"] = target.base_url
        key = target.api_key
        if not key and target.provider in _OPENAI_LIKE and target.base_url:
            key = NO_KEY
        if key:
            kwargs["api_key"] = key
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.tools:
            kwargs["tools"] = [dict(t) for t in request.tools]
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.response_format == "json":
            kwargs["response_format"] = {"type": "json_object"}
        headers = _headers(request)
        if headers:
            kwargs["extra_headers"] = headers
        return kwargs

    async def _stream(
        self,
        litellm: Any,
        kwargs: dict[str, Any],
        on_token: TokenCallback,
        streamed: list[bool],
    ) -> Any:
        stream = await litellm.acompletion(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        chunks: list[Any] = []
        try:
            async for chunk in stream:
                chunks.append(chunk)
                choices = getattr(chunk, "choices", None) or []
                delta = getattr(choices[0], "delta", None) if choices else None
                text = getattr(delta, "content", None) if delta is not None else None
                if text:
                    streamed[0] = True
                    await on_token(text)
        finally:
            # Closing the HTTP stream is what stops the provider's work on a cancel.
            await stream.aclose()
        built = litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
        if built is None:
            raise LlmCallFailed("server", "the provider's stream ended without a reply")
        return built

    def _reply(self, litellm: Any, target: LlmTarget, response: Any) -> LlmReply:
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        content = getattr(message, "content", None) or ""
        calls: list[Mapping[str, Any]] = []
        for call in getattr(message, "tool_calls", None) or []:
            fn = getattr(call, "function", None)
            calls.append(
                {
                    "id": getattr(call, "id", None),
                    "type": "function",
                    "function": {
                        "name": getattr(fn, "name", None),
                        "arguments": getattr(fn, "arguments", None) or "{}",
                    },
                }
            )
        raw_usage = getattr(response, "usage", None)
        prompt = int(getattr(raw_usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(raw_usage, "completion_tokens", 0) or 0)
        usage = Usage(1, prompt, completion, cost_of(litellm, target, prompt, completion))
        finish = getattr(choices[0], "finish_reason", None) if choices else None
        return LlmReply(
            content=content,
            model=str(getattr(response, "model", None) or target.model),
            provider_id=target.provider_id,
            usage=usage,
            tool_calls=tuple(calls),
            finish_reason=finish,
        )


def _failure(exc: Exception, litellm: Any, target: LlmTarget) -> LlmCallFailed:
    kind = classify(exc, litellm)
    message = scrub(str(exc) or type(exc).__name__, target.api_key)
    if kind == "network":
        message = f"cannot reach {target.base_url or target.provider}: {message}"
    return LlmCallFailed(kind, message)


def _headers(request: LlmRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    if request.run_tag:
        headers[RUN_HEADER] = request.run_tag
    if request.node_tag:
        headers[NODE_HEADER] = request.node_tag
    return headers

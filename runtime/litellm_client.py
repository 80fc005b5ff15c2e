"""`LlmClient` over LiteLLM: one call against one resolved target.

It streams when asked, applies the target's timeout and retries, reads usage and the
cost (LiteLLM's bundled price map; None for unknown models), and turns every failure
into `LlmCallFailed` with a kind (the domain decides about failover) and a message
scrubbed of the key. Failover, recording and key decryption are not done here.

LiteLLM takes seconds to import, so it is imported on first use, off the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

import runtime  # noqa: F401  # offline defaults, before LiteLLM is imported
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

_litellm: Any = None
_import_lock = threading.Lock()


def _load() -> Any:
    global _litellm
    with _import_lock:
        if _litellm is None:
            module: Any = importlib.import_module("litellm")
            module.suppress_debug_info = True  # no "Give Feedback" banners on stdout
            module.telemetry = False
            module.drop_params = True  # providers that lack a knob ignore it
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

    def __init__(self, *, backoff_seconds: float = _BACKOFF_SECONDS) -> None:
        self._backoff = backoff_seconds

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
        kwargs = self._kwargs(target, request)
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
        # Raised outside the handler: LiteLLM's exception (its message, its request with
        # the key in a header) is not even kept as `__context__` of what we raise.
        raise failure

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

"""The model every CrewAI agent of ours talks to: a `BaseLLM` over the service's gateway.

CrewAI would send openai/anthropic/gemini models to their native SDKs, bypassing
failover, usage recording, cancellation and the egress policy; agents get this class
instead. CrewAI calls `call()` from one of its own threads; the call is bridged to the
service's event loop (`run_coroutine_threadsafe`) and the streamed tokens come back to
the calling thread, which emits them as `LLMStreamChunkEvent`s like CrewAI's own LLMs
(the run's event handler turns them into TOKEN events).

Imports CrewAI: import this module only after `runtime.crewai_env.load()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
from collections.abc import Mapping, Sequence
from typing import Any

from crewai.events.types.llm_events import LLMCallType
from crewai.hooks import HookAborted
from crewai.llms.base_llm import BaseLLM, LLMCallBlockedError, llm_call_context
from pydantic import BaseModel

from domain.llm import LlmCallFailed, LlmReply, LlmRequest
from runtime.crewai_events import (
    AgentRunCancelled,
    GatewayLlmError,
    RunChannel,
    current_channel,
)

CONTEXT_WINDOW = 32_768
_DONE = object()


def _channel() -> RunChannel:
    channel = current_channel.get()
    if channel is None:
        raise RuntimeError("an agent model call outside of a node run")
    return channel


def _messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style messages as the gateway takes them (CrewAI's extra keys dropped)."""
    keep = ("role", "content", "name", "tool_calls", "tool_call_id")
    return [{k: m[k] for k in keep if k in m and m[k] is not None} for m in messages]


class GatewayLLM(BaseLLM):
    """One agent's model: the stored provider `provider_id`, reached through the gateway."""

    llm_type: str = "crewgraph-gateway"
    provider_id: str
    stream: bool | None = True

    def call(
        self,
        messages: str | list[Any],
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any | None = None,
        from_agent: Any | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> str | Any:
        channel = _channel()
        channel.check_open()
        with llm_call_context():
            try:
                self._emit_call_started_event(
                    messages=messages,
                    tools=tools,
                    callbacks=callbacks,
                    available_functions=available_functions,
                    from_task=from_task,
                    from_agent=from_agent,
                )
                formatted = self._format_messages(messages)
                self._invoke_before_llm_call_hooks(formatted, from_agent)
                channel.check_open()
                reply = self._complete(
                    channel, formatted, tools, response_model, from_task, from_agent
                )
            except (HookAborted, LLMCallBlockedError) as exc:
                self._emit_call_denied_event(exc, from_task, from_agent)
                raise
            except AgentRunCancelled:
                raise
            except GatewayLlmError as exc:
                self._emit_call_failed_event(str(exc), from_task, from_agent)
                raise
            return self._finish(
                reply, formatted, available_functions, response_model, from_task, from_agent
            )

    # CrewAI wraps `call` in its own rate-limit retries; the gateway already retries and
    # fails over, and a cancelled run must not be retried at all.
    call._crewai_rate_limit_wrapped = True  # type: ignore[attr-defined]

    async def acall(
        self,
        messages: str | list[Any],
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any | None = None,
        from_agent: Any | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> str | Any:
        return await asyncio.to_thread(
            self.call,
            messages,
            tools,
            callbacks,
            available_functions,
            from_task,
            from_agent,
            response_model,
        )

    acall._crewai_rate_limit_wrapped = True  # type: ignore[attr-defined]

    def _complete(
        self,
        channel: RunChannel,
        messages: list[Any],
        tools: list[dict[str, Any]] | None,
        response_model: type[BaseModel] | None,
        from_task: Any | None,
        from_agent: Any | None,
    ) -> LlmReply:
        request = LlmRequest(
            messages=_messages(messages),
            temperature=self.temperature,
            max_tokens=int(self.max_tokens) if self.max_tokens else None,
            tools=list(tools) if tools else None,
            response_format="json" if response_model is not None else "text",
            stop=list(self.stop_sequences) or None,
        )
        chunks: queue.SimpleQueue[object] = queue.SimpleQueue()

        async def on_token(text: str) -> None:
            chunks.put(text)

        future = asyncio.run_coroutine_threadsafe(
            channel.run.complete(self.provider_id, request, on_token), channel.loop
        )
        channel.track(future)
        future.add_done_callback(lambda _: chunks.put(_DONE))
        try:
            while (item := chunks.get()) is not _DONE:
                if not channel.cancelled:
                    self._emit_stream_chunk_event(
                        str(item),
                        from_task=from_task,
                        from_agent=from_agent,
                        call_type=LLMCallType.LLM_CALL,
                    )
            return future.result()
        except concurrent.futures.CancelledError:
            raise AgentRunCancelled("the execution was cancelled") from None
        except LlmCallFailed as exc:
            raise GatewayLlmError(exc.kind, str(exc)) from None
        finally:
            channel.untrack(future)

    def _finish(
        self,
        reply: LlmReply,
        messages: list[Any],
        available_functions: dict[str, Any] | None,
        response_model: type[BaseModel] | None,
        from_task: Any | None,
        from_agent: Any | None,
    ) -> Any:
        usage = {
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "total_tokens": reply.usage.total_tokens,
            "successful_requests": 1,
        }
        self._track_token_usage_internal(usage)
        if reply.tool_calls:
            calls = [dict(c) for c in reply.tool_calls]
            if not available_functions:
                # The agent executor runs the tools itself (native tool calling).
                self._emit_call_completed_event(
                    response=calls,
                    call_type=LLMCallType.TOOL_CALL,
                    from_task=from_task,
                    from_agent=from_agent,
                    messages=messages,
                    usage=usage,
                )
                return calls
            first = calls[0].get("function") or {}
            try:
                args = json.loads(first.get("arguments") or "{}")
            except ValueError:
                args = {}
            return self._handle_tool_execution(
                str(first.get("name", "")),
                args if isinstance(args, dict) else {},
                available_functions,
                from_task,
                from_agent,
            )
        text = self._apply_stop_words(reply.content or "")
        text = self._invoke_after_llm_call_hooks(messages, text, from_agent)
        self._emit_call_completed_event(
            response=text,
            call_type=LLMCallType.LLM_CALL,
            from_task=from_task,
            from_agent=from_agent,
            messages=messages,
            usage=usage,
            finish_reason=reply.finish_reason,
        )
        if response_model is not None:
            return self._validate_structured_output(text, response_model)
        return text

    def get_input_tokens_count(
        self,
        messages: str | list[Any],
        tools: list[dict[str, Any]] | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> int:
        """CrewAI's estimate (a token per four characters) without its warning per call:
        the provider counts the real tokens, which the gateway records."""
        if isinstance(messages, str):
            chars = len(messages)
        else:
            chars = sum(len(str(m.get("content") or "")) for m in messages)
        return (chars + 3) // 4

    def supports_function_calling(self) -> bool:
        return True

    def supports_stop_words(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return CONTEXT_WINDOW

"""A floor of the relay benchmark: one client library reading the same SSE stream.

    python -m bench._stream_floor httpx|openai|litellm|wakeup URL PROMPT PACE MODEL...

Imports its library, prints `ready`, waits for a line on stdin, streams one completion
from each MODEL of the paced model process and prints `{model: {"chunks",
"cpu_per_chunk_us"}}`: this process's CPU time (all threads, ns resolution) between the
first and the last content chunk, per chunk, doing the least a relay must do (parse each
chunk, take its text). `wakeup` reads nothing: a bare asyncio task waking every PACE
seconds, the cost of one event-loop wake-up on this machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

KINDS = ("httpx", "openai", "litellm", "wakeup")
WAKEUPS = 50


async def _httpx_chunks(url: str, model: str, prompt: str) -> AsyncIterator[str]:
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{url}/chat/completions", json=body) as resp,
    ):
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            text = choices[0].get("delta", {}).get("content") if choices else None
            if text:
                yield text


async def _openai_chunks(url: str, model: str, prompt: str) -> AsyncIterator[str]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="no-key", max_retries=0)
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            yield text
    await client.close()


async def _litellm_chunks(url: str, model: str, prompt: str) -> AsyncIterator[str]:
    from runtime.litellm_client import load_litellm

    litellm = await load_litellm()  # with the service's offline settings
    stream = await litellm.acompletion(
        model=f"openai/{model}",
        api_base=url,
        api_key="no-key",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
        max_retries=0,
    )
    async for chunk in stream:
        choices = getattr(chunk, "choices", None) or []
        delta = getattr(choices[0], "delta", None) if choices else None
        text = getattr(delta, "content", None) if delta is not None else None
        if text:
            yield text


async def _wakeups(pace: float) -> AsyncIterator[str]:
    for _ in range(WAKEUPS):
        await asyncio.sleep(pace)
        yield ""


async def _measure(kind: str, url: str, prompt: str, pace: float, model: str) -> dict[str, Any]:
    readers = {"httpx": _httpx_chunks, "openai": _openai_chunks, "litellm": _litellm_chunks}
    chunks_of = _wakeups(pace) if kind == "wakeup" else readers[kind](url, model, prompt)
    first_cpu = last_cpu = 0
    chunks = 0
    async for _ in chunks_of:
        now = time.process_time_ns()
        if chunks == 0:
            first_cpu = now
        last_cpu = now
        chunks += 1
    per_chunk = (last_cpu - first_cpu) / max(1, chunks - 1) / 1000
    return {"chunks": chunks, "cpu_per_chunk_us": per_chunk}


async def _measure_all(
    kind: str, url: str, prompt: str, pace: float, models: list[str]
) -> dict[str, Any]:
    return {m: await _measure(kind, url, prompt, pace, m) for m in models}


def _preload(kind: str) -> None:
    if kind in ("httpx", "wakeup"):
        import httpx  # noqa: F401
    elif kind == "openai":
        import openai  # noqa: F401
    else:
        from runtime.litellm_client import load_litellm

        asyncio.run(load_litellm())


def main() -> None:
    kind, url, prompt, pace, *models = sys.argv[1:]
    if kind not in KINDS:
        raise SystemExit(f"unknown floor {kind!r}; one of {', '.join(KINDS)}")
    _preload(kind)  # the import is not part of what is measured
    print("ready", flush=True)
    sys.stdin.readline()
    result = asyncio.run(_measure_all(kind, url, prompt, float(pace), models))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

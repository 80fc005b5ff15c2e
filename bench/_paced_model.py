"""The scripted model (runtime/scripted.py) in a process of its own, with paced models and
a clock on every chunk it sends: the "provider" of the AI runtime benchmark.

    python -m bench._paced_model --port 8123 --model relay:0.02:250 --model crew:0.02:0

A process apart from the API server, so the server's CPU is the relay's alone (not the
model's own generation). `--model NAME:SECONDS_PER_TOKEN:TOKENS` registers a scripted
model that streams TOKENS tokens (0: as many as the scripted reply has), one every
SECONDS_PER_TOKEN. The chat routes are served at `/v1`; `GET /_times?run=ID` returns,
per request of that run (the `X-Crewgraph-Run` header the gateway sends), when it arrived,
when each content chunk was handed to the socket and when the response ended
(`time.time()`, comparable with the clients' clocks on this machine).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime import scripted

_CONTENT = b'"delta": {"content": "'  # a content chunk; the first (role) chunk has "role"


class _Timed:
    """ASGI middleware stamping each streamed content chunk of `chat/completions`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.runs: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        run = headers.get(scripted.RUN_HEADER.encode(), b"").decode() or "-"
        record: dict[str, Any] = {"start": time.time(), "chunks": [], "end": None}
        self.runs[run].append(record)
        chunks: list[float] = record["chunks"]

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.body":
                if _CONTENT in message.get("body", b""):
                    chunks.append(time.time())
                if not message.get("more_body", False):
                    record["end"] = time.time()
            await send(message)

        await self.app(scope, receive, timed)

    async def times(self, request: Request) -> Response:
        return JSONResponse({"requests": self.runs.get(request.query_params.get("run", ""), [])})


def _register(spec: str) -> None:
    name, seconds, tokens = spec.split(":")
    scripted.MODELS[name] = scripted.ScriptedModel(
        name,
        f"paced benchmark model: one token per {float(seconds) * 1000:g} ms",
        token_delay=float(seconds),
        fixed_tokens=int(tokens) or None,
    )


def app(specs: list[str]) -> Starlette:
    for spec in specs:
        _register(spec)
    # Enough room for every stream of the fan-out at once (the endpoint bounds them).
    timed = _Timed(scripted.scripted_app(scripted.ScriptedEndpoint(max_concurrent=1000)))
    return Starlette(
        routes=[Route("/_times", timed.times, methods=["GET"]), Mount("/v1", app=timed)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", default=[], help="NAME:SECONDS:TOKENS")
    args = parser.parse_args()
    print(json.dumps({"models": args.model}), flush=True)
    uvicorn.run(app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

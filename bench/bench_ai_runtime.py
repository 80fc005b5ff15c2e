"""AI runtime: per-token relay cost, a 3-agent crew's overhead, 50 concurrent LLM streams.

    .venv/bin/python bench/bench_ai_runtime.py            # full: ~2 minutes
    .venv/bin/python bench/bench_ai_runtime.py --short    # CI smoke (< 1 min): 20-token
                                                          # relay, 1 crew run, 5 streams

The "provider" is the scripted model (runtime/scripted.py) served by a process of its own
(bench/_paced_model.py) with paced models, one token every `--token-ms` (20 ms: 50
tokens/s, a typical hosted model), stamping the moment each chunk is handed to its socket.
The API server is a real `crewgraph serve` process (PostgreSQL, Redis, in-process worker);
its providers point at the model process over real HTTP, so the server's CPU is the
relay's alone: LiteLLM reading the stream, the LLM node, the run journal (TOKEN events
stored in batches), Redis publish, the `executionEvents` fan-out and the WebSocket frame.

1. Relay: one LLM node streaming, one subscriber. Server CPU per token (per-thread
   scheduler time of the server process, ns resolution, in 1 s windows between the first
   and the last token frame; p50 of the windows, or of the runs when they are too short
   for three windows) and latency chunk → frame (chunk handed to the model's socket →
   frame parsed by the subscriber); then the same stream once unpaced. Side by side, in
   processes of their own, the floors reading the same streams: raw httpx (parse each SSE
   chunk), the OpenAI SDK and LiteLLM (what the gateway calls), CPU per chunk, and the
   cost of a bare asyncio wake-up at the same pace (what this machine charges for one).
2. Crew: a 3-agent sequential crew (CREW node) on a paced scripted model: the node's wall
   time (its NODE_STARTED → NODE_COMPLETED timestamps) against the model's own time
   (request received → last byte sent, summed over the crew's requests); the difference
   per agent step is the framework's overhead (CrewAI, our BaseLLM and event bridge, the
   gateway, usage records, events).
3. Fan-out: 50 LLM nodes streaming at once (50 executions, one subscriber each): tokens/s
   delivered to the subscribers against the rate the model sent them at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import ROOT, bench_tenant, machine, percentile, server, services
from domain.executions.journal import DEFAULT_TOKEN_DELAY
from tests.support import builders
from tests.support.client import GQL
from tests.support.services import free_port
from tests.support.ws import init, subscribe

SUBSCRIBE = (
    "subscription E($id: ID!, $after: Int) { executionEvents(executionId: $id, "
    "afterSequence: $after) { sequence type nodeId at data } }"
)
TERMINAL = {"EXECUTION_COMPLETED", "EXECUTION_FAILED", "EXECUTION_CANCELLED"}
PROMPT = "SAY: the quick brown fox jumps over the lazy dog"
CPU_WINDOW = 1.0
IDLE_SECONDS = 1.0
TARGET_CPU_US = 300.0
TARGET_LATENCY_MS = 20.0
CREW_AGENTS = 3
CREW_WORDS = 20
TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Plan:
    token_s: float
    relay_tokens: int
    relay_runs: int
    crew_runs: int
    fan_streams: int
    fan_tokens: int
    floors: tuple[str, ...]


def plan(short: bool, token_ms: float, streams: int | None) -> Plan:
    if short:
        # Proves every part runs end to end and prints its table; the figures mean little.
        return Plan(token_ms / 1000, 20, 1, 1, streams or 5, 10, ("wakeup", "httpx", "openai"))
    floors = ("wakeup", "httpx", "openai", "litellm")
    return Plan(token_ms / 1000, 250, 3, 5, streams or 50, 250, floors)


_T0 = time.monotonic()


def _phase(name: str) -> None:
    """Progress on stderr (`make bench` shows it only when the benchmark fails)."""
    print(f"[ai_runtime {time.monotonic() - _T0:6.1f} s] {name}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _cpu_ns(pid: int) -> int:
    """CPU time of every live thread of `pid` (user + system), in ns: the scheduler's
    per-thread clock (Linux procfs), where psutil's clock ticks (10 ms) are too coarse."""
    total = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total


@dataclass
class Model:
    url: str  # the OpenAI-compatible base URL
    proc: subprocess.Popen[bytes]

    async def times(self, run: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            resp = await http.get(self.url.removesuffix("/v1") + "/_times", params={"run": run})
        resp.raise_for_status()
        found: list[dict[str, Any]] = resp.json()["requests"]
        return found


@contextlib.asynccontextmanager
async def paced_model(p: Plan) -> AsyncIterator[Model]:
    port = free_port()
    specs = [
        f"relay:{p.token_s}:{p.relay_tokens}",
        f"burst:0:{p.relay_tokens}",
        f"crew:{p.token_s}:0",
        f"fan:{p.token_s}:{p.fan_tokens}",
    ]
    args = [sys.executable, "-m", "bench._paced_model", "--port", str(port)]
    for spec in specs:
        args += ["--model", spec]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    model = Model(f"http://127.0.0.1:{port}/v1", proc)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(model.url + "/models")).status_code == 200:
                        break
                if proc.poll() is not None:
                    raise RuntimeError("the paced model process exited")
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("the paced model did not start")
        yield model
    finally:
        proc.terminate()
        proc.wait(10)


class Floor:
    """A floor client process (bench/_stream_floor.py), imported and waiting for `go`."""

    def __init__(self, kind: str, model: Model, pace: float) -> None:
        self.kind = kind
        self.model = model
        self.pace = pace
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        models = ["relay"] if self.kind == "wakeup" else ["relay", "burst"]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._stream_floor",
            self.kind,
            self.model.url,
            PROMPT,
            str(self.pace),
            *models,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )

    async def run(self) -> dict[str, dict[str, Any]]:
        """{model: {"chunks", "cpu_per_chunk_us"}}"""
        assert self.proc and self.proc.stdin and self.proc.stdout
        ready = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if ready.strip() != b"ready":
            raise RuntimeError(f"floor {self.kind} did not start: {ready!r}")
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        await self.proc.wait()
        result: dict[str, dict[str, Any]] = json.loads(line)
        return result

    def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()


# --------------------------------------------------------------------------- subscribers


@dataclass
class Stream:
    """What one subscriber saw of one execution."""

    execution_id: str = ""
    tokens: dict[int, float] = field(default_factory=dict)  # index → received (time.time)
    duplicates: int = 0
    node_at: dict[tuple[str, str], str] = field(default_factory=dict)  # (type, node) → at
    status: str = ""
    ended: float = 0.0
    cpu_of: int = 0  # a pid: read its CPU at the first and at the last token frame
    cpu_first: int = 0
    cpu_last: int = 0

    def cpu_per_token_us(self) -> float:
        return (self.cpu_last - self.cpu_first) / max(1, len(self.tokens) - 1) / 1000


async def follow(
    gql: GQL,
    token: str,
    flow_id: str,
    ready: asyncio.Event | None = None,
    stream: Stream | None = None,
) -> tuple[Stream, float]:
    """Start an execution of `flow_id` and follow its events to the end, into `stream`
    (filled live); with `ready`, the WebSocket is opened first and the execution starts
    when `ready` is set. (what it saw, when the execution was requested)"""
    stream = stream if stream is not None else Stream()
    async with gql.connect_ws() as ws:
        await init(ws, {"authorization": f"Bearer {token}"})
        if ready is not None:
            await ready.wait()
        t0 = time.time()
        started = await gql.ok("ExecuteFlow", {"id": flow_id, "inputs": {}}, token=token)
        stream.execution_id = started["executeFlow"]["id"]
        await subscribe(ws, "e", SUBSCRIBE, {"id": stream.execution_id, "after": 0})
        while True:
            raw = await asyncio.wait_for(ws.recv(), 120)
            now = time.time()
            msg = json.loads(raw)
            if msg.get("type") == "complete":
                break
            if msg.get("type") != "next":
                if msg.get("type") == "error":
                    raise RuntimeError(f"subscription error: {msg}")
                continue
            event = msg["payload"]["data"]["executionEvents"]
            kind = event["type"]
            if kind == "TOKEN":
                index = int(event["data"]["index"])
                if index in stream.tokens:
                    stream.duplicates += 1
                if stream.cpu_of:
                    stream.cpu_last = _cpu_ns(stream.cpu_of)
                    if not stream.tokens:
                        stream.cpu_first = stream.cpu_last
                stream.tokens.setdefault(index, now)
            elif kind.startswith("NODE_"):
                stream.node_at[(kind, event["nodeId"])] = event["at"]
            elif kind in TERMINAL:
                stream.status = kind
                stream.ended = now
    return stream, t0


def latencies(stream: Stream, model_requests: list[dict[str, Any]]) -> list[float]:
    """Chunk handed to the model's socket → frame received, per token (seconds)."""
    sent = [t for r in model_requests for t in r["chunks"]]
    return [stream.tokens[i] - sent[i] for i in sorted(stream.tokens) if i < len(sent)]


class CpuSampler:
    """Samples the server's CPU and the tokens received, every CPU_WINDOW seconds."""

    def __init__(self, pid: int, streams: list[Stream]) -> None:
        self.pid = pid
        self.streams = streams
        self.samples: list[tuple[int, int]] = []  # (cpu ns, tokens received)
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        self.samples.append((_cpu_ns(self.pid), sum(len(s.tokens) for s in self.streams)))

    async def _loop(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(CPU_WINDOW)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()

    def per_token_us(self) -> list[float]:
        """CPU per token of every window in which tokens kept arriving (the first and the
        last window of the stream are partial and left out when there are others)."""
        flowing = [
            (c1 - c0, n1 - n0) for (c0, n0), (c1, n1) in itertools.pairwise(self.samples) if n1 > n0
        ]
        inner = flowing[1:-1] if len(flowing) > 2 else flowing
        return [cpu / n / 1000 for cpu, n in inner if n]


# --------------------------------------------------------------------------- set-up


def llm_flow(provider_id: str, prompt: str = PROMPT) -> dict[str, Any]:
    return {
        "name": f"bench-llm-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "ask", "kind": "LLM", "config": {"providerId": provider_id, "prompt": prompt}},
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "ask"}, {"source": "ask", "target": "out"}],
    }


def crew_flow(crew_id: str) -> dict[str, Any]:
    return {
        "name": f"bench-crew-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "crew", "kind": "CREW", "config": {"crewId": crew_id, "inputs": {}}},
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "crew"}, {"source": "crew", "target": "out"}],
    }


async def provider(gql: GQL, token: str, model: Model, name: str) -> str:
    data = {
        "name": f"paced-{name}-{uuid.uuid4().hex[:6]}",
        "provider": "openai",
        "model": name,
        "baseUrl": model.url,
        "maxRetries": 0,
        "timeoutSeconds": 120,
    }
    body = await gql.ok("CreateLlmProviderRuntime", {"input": data}, token=token)
    return str(body["createLlmProvider"]["id"])


async def create_flow(gql: GQL, token: str, flow: dict[str, Any]) -> str:
    return str((await gql.ok("CreateFlow", {"input": flow}, token=token))["createFlow"]["id"])


async def three_agent_crew(gql: GQL, token: str, provider_id: str) -> str:
    roles = ["Researcher", "Analyst", "Writer"][:CREW_AGENTS]
    agents = [
        (
            await builders.agent(
                gql,
                token,
                role=role,
                goal=f"Do the work of a {role}",
                backstory="A benchmark agent",
                llmProviderId=provider_id,
            )
        )["id"]
        for role in roles
    ]
    words = " ".join(f"w{i}" for i in range(CREW_WORDS))
    tasks = [
        {"description": f"Step {i + 1}. SAY: {words}", "expectedOutput": "text", "agentId": a}
        for i, a in enumerate(agents)
    ]
    crew = await builders.crew(gql, token, agents, tasks=tasks, process="sequential")
    return str(crew["id"])


# --------------------------------------------------------------------------- the three parts


@dataclass
class RelayResult:
    floors: dict[str, dict[str, dict[str, Any]]]  # kind → model → result
    cpu_us: list[float]  # paced: per 1 s window (or per run when the runs are short)
    burst_cpu_us: float  # the same stream unpaced, first → last token frame
    latency_ms: list[float]
    tokens: int
    expected: int
    idle_cpu_ms_per_s: float


async def relay(
    gql: GQL,
    token: str,
    flows: tuple[str, str],
    model: Model,
    p: Plan,
    pid: int,
    floors: list[Floor],
) -> RelayResult:
    paced_flow, burst_flow = flows
    floor_results = {}
    for floor in floors:  # one at a time, so they do not compete for the two cores
        floor_results[floor.kind] = await floor.run()
    _phase("floors measured")
    idle0 = _cpu_ns(pid)
    await asyncio.sleep(IDLE_SECONDS)
    idle = (_cpu_ns(pid) - idle0) / IDLE_SECONDS / 1e6
    windows: list[float] = []
    whole: list[float] = []
    lat: list[float] = []
    tokens = 0
    profiling = bool(os.environ.get("BENCH_SERVER_RUNNER"))
    if profiling:
        os.kill(pid, signal.SIGUSR1)  # a profiling wrapper: measure the paced runs only
    for _ in range(p.relay_runs):
        stream = Stream(cpu_of=pid)
        sampler = CpuSampler(pid, [stream])
        sampler.start()
        try:
            await follow(gql, token, paced_flow, stream=stream)
        finally:
            await sampler.stop()
        requests = await model.times(stream.execution_id)
        windows += sampler.per_token_us()
        whole.append(stream.cpu_per_token_us())
        lat += [x * 1000 for x in latencies(stream, requests)]
        tokens += len(stream.tokens)
    if profiling:
        os.kill(pid, signal.SIGUSR1)
    burst, _ = await follow(gql, token, burst_flow, stream=Stream(cpu_of=pid))
    return RelayResult(
        floors=floor_results,
        cpu_us=windows if len(windows) >= 3 else whole,
        burst_cpu_us=burst.cpu_per_token_us(),
        latency_ms=lat,
        tokens=tokens + len(burst.tokens),
        expected=p.relay_tokens * (p.relay_runs + 1),
        idle_cpu_ms_per_s=idle,
    )


@dataclass
class CrewRun:
    calls: int
    model_s: float
    node_s: float
    execution_s: float
    before_first_s: float
    gaps_s: list[float]
    after_last_s: float
    status: str


async def crew_run(gql: GQL, token: str, flow_id: str, model: Model) -> CrewRun:
    stream, t0 = await follow(gql, token, flow_id)
    requests = sorted(await model.times(stream.execution_id), key=lambda r: r["start"])
    started = _ts(stream.node_at[("NODE_STARTED", "crew")])
    completed = _ts(stream.node_at.get(("NODE_COMPLETED", "crew"), ""))
    model_s = sum(r["end"] - r["start"] for r in requests)
    gaps = [b["start"] - a["end"] for a, b in itertools.pairwise(requests)]
    return CrewRun(
        calls=len(requests),
        model_s=model_s,
        node_s=completed - started,
        execution_s=stream.ended - t0,
        before_first_s=requests[0]["start"] - started if requests else 0.0,
        gaps_s=gaps,
        after_last_s=completed - requests[-1]["end"] if requests else 0.0,
        status=stream.status,
    )


def _ts(at: str) -> float:
    return datetime.fromisoformat(at).timestamp() if at else float("nan")


@dataclass
class FanResult:
    streams: int
    completed: int
    tokens: int
    expected: int
    duplicates: int
    model_rate: float
    delivered_rate: float
    all_at_once: bool  # the rates are those of the window in which every stream streamed
    window_s: float
    behind_s: float
    latency_ms: list[float]
    cpu_us: list[float]


async def fan_out(gql: GQL, token: str, flow_id: str, model: Model, p: Plan, pid: int) -> FanResult:
    go = asyncio.Event()
    streams = [Stream() for _ in range(p.fan_streams)]
    tasks = [asyncio.create_task(follow(gql, token, flow_id, go, s)) for s in streams]
    await asyncio.sleep(1.0)  # every WebSocket open and acknowledged
    sampler = CpuSampler(pid, streams)
    sampler.start()
    go.set()
    try:
        await asyncio.gather(*tasks)
    finally:
        await sampler.stop()
    sent: list[float] = []
    received: list[float] = []
    lat: list[float] = []
    spans: list[tuple[float, float]] = []  # per stream: first, last chunk sent
    for stream in streams:
        requests = await model.times(stream.execution_id)
        chunks = [t for r in requests for t in r["chunks"]]
        sent += chunks
        received += list(stream.tokens.values())
        lat += [x * 1000 for x in latencies(stream, requests)]
        if chunks:
            spans.append((chunks[0], chunks[-1]))
    # Rates over the window in which all streams were streaming at the model, when there
    # is one of at least a second; else over the whole run (start-up spread included).
    begin = max((a for a, _ in spans), default=0.0)
    end = min((b for _, b in spans), default=0.0)
    all_at_once = end - begin >= 1.0
    if not all_at_once and sent and received:
        begin, end = min(sent), max(sent)
    span = max(end - begin, 1e-9)
    model_rate = sum(begin <= t <= end for t in sent) / span
    if all_at_once:
        delivered_rate = sum(begin <= t <= end for t in received) / span
    else:
        delivered_rate = len(received) / max(max(received, default=0.0) - begin, 1e-9)
    return FanResult(
        streams=len(streams),
        completed=sum(s.status == "EXECUTION_COMPLETED" for s in streams),
        tokens=sum(len(s.tokens) for s in streams),
        expected=p.fan_tokens * p.fan_streams,
        duplicates=sum(s.duplicates for s in streams),
        model_rate=model_rate,
        delivered_rate=delivered_rate,
        all_at_once=all_at_once,
        window_s=span,
        behind_s=max(received) - max(sent) if received and sent else float("nan"),
        latency_ms=lat,
        cpu_us=sampler.per_token_us(),
    )


# --------------------------------------------------------------------------- report


def _us(values: list[float]) -> str:
    return f"{percentile(values, 50):.0f} µs" if values else "–"


def _ms(values: list[float], p: float = 50) -> str:
    return f"{percentile(values, p):.1f} ms" if values else "–"


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def _relay(p: Plan, r: RelayResult) -> Iterator[str]:
    rate = 1 / p.token_s
    yield (
        f"### Relay: provider socket → subscriber's WebSocket frame ({p.relay_runs} × "
        f"{p.relay_tokens} tokens at {rate:.0f}/s, then once unpaced; one subscriber)"
    )
    yield ""
    yield (
        f"| path | CPU per token, {rate:.0f} tokens/s (p50) | x raw httpx | CPU per token, "
        "unpaced | x raw httpx | latency chunk → frame p50 | p99 |"
    )
    yield "|---|---:|---:|---:|---:|---:|---:|"
    httpx_floor = r.floors.get("httpx", {})
    base = float(httpx_floor.get("relay", {}).get("cpu_per_chunk_us", "nan"))
    base_burst = float(httpx_floor.get("burst", {}).get("cpu_per_chunk_us", "nan"))
    names = {
        "wakeup": "(machine) a bare asyncio task waking at the same pace, per wake-up",
        "httpx": "raw httpx reading the SSE stream, parsing each chunk (floor)",
        "openai": "OpenAI SDK streaming (floor)",
        "litellm": "LiteLLM streaming, as the gateway calls it (floor)",
    }
    for kind, results in r.floors.items():
        paced = float(results["relay"]["cpu_per_chunk_us"])
        burst = results.get("burst")
        unpaced = (
            f"{float(burst['cpu_per_chunk_us']):.0f} µs | "
            f"{float(burst['cpu_per_chunk_us']) / base_burst:.1f}x"
            if burst
            else "– | –"
        )
        yield f"| {names[kind]} | {paced:.0f} µs | {paced / base:.1f}x | {unpaced} | – | – |"
    server_cpu = percentile(r.cpu_us, 50) if r.cpu_us else float("nan")
    yield (
        "| **Crewgraph server**: LiteLLM → LLM node → run journal (PostgreSQL, batched) → "
        f"Redis → `executionEvents` → WebSocket | **{server_cpu:.0f} µs** | "
        f"{server_cpu / base:.1f}x | {r.burst_cpu_us:.0f} µs | "
        f"{r.burst_cpu_us / base_burst:.1f}x | **{_ms(r.latency_ms)}** | "
        f"{_ms(r.latency_ms, 99)} |"
    )
    yield ""
    lat50 = percentile(r.latency_ms, 50) if r.latency_ms else float("nan")
    yield (
        f"Tokens delivered: {r.tokens}/{r.expected}. Server idle CPU (no stream): "
        f"{r.idle_cpu_ms_per_s:.1f} ms/s, included above. Targets: server CPU per token p50 "
        f"{server_cpu:.0f} µs (target < {TARGET_CPU_US:.0f}): "
        f"{_verdict(server_cpu < TARGET_CPU_US)}; latency chunk → frame p50 {lat50:.1f} ms "
        f"(target < {TARGET_LATENCY_MS:.0f}): {_verdict(lat50 < TARGET_LATENCY_MS)}."
    )
    wake = float(r.floors.get("wakeup", {}).get("relay", {}).get("cpu_per_chunk_us", "nan"))
    if not server_cpu < TARGET_CPU_US:
        yield ""
        yield (
            f"Why the CPU target is missed here: on this machine every wake-up and system call "
            f"is expensive (a bare asyncio task waking every {p.token_s * 1000:g} ms costs "
            f"{wake:.0f} µs per wake-up; raw httpx costs {base:.0f} µs per chunk at this pace "
            f"against {base_burst:.0f} µs unpaced), so an absolute {TARGET_CPU_US:.0f} µs is "
            "below what even the floor pays at a realistic pace; compare the ratios. Per "
            "token the server wakes for the provider's chunk and, per stored batch, for the "
            "PostgreSQL commit, one Redis publish per event, the pub/sub read and the "
            "WebSocket write."
        )
    if not lat50 < TARGET_LATENCY_MS:
        yield ""
        yield (
            "Why the latency target is missed: the run journal stores TOKEN events in "
            f"batches, flushed {DEFAULT_TOKEN_DELAY * 1000:g} ms after the batch's first "
            f"token (domain/executions/journal.py); at {1 / p.token_s:.0f} tokens/s a token "
            f"waits {DEFAULT_TOKEN_DELAY * 500:g} ms for its batch on average before the "
            "commit, the publish and the fan-out. A p50 under 20 ms needs a flush delay of "
            "about 20 ms (more commits per token)."
        )


def _crew(crews: list[CrewRun]) -> Iterator[str]:
    yield (
        f"### Crew: {CREW_AGENTS} agents, sequential, {CREW_WORDS}-word answers "
        f"({len(crews)} runs after a warm-up)"
    )
    yield ""
    yield (
        "| run | LLM calls | model's own time | CREW node wall | wall / model | "
        "overhead per agent step | before 1st call | between calls | after last call | "
        "executeFlow → terminal event |"
    )
    yield "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for i, c in enumerate(crews, 1):
        steps = max(1, c.calls)
        gaps = statistics.mean(c.gaps_s) if c.gaps_s else 0.0
        yield (
            f"| {i} | {c.calls} | {c.model_s:.2f} s | {c.node_s:.2f} s | "
            f"{c.node_s / c.model_s:.2f}x | {(c.node_s - c.model_s) / steps * 1000:.0f} ms | "
            f"{c.before_first_s * 1000:.0f} ms | {gaps * 1000:.0f} ms | "
            f"{c.after_last_s * 1000:.0f} ms | {c.execution_s:.2f} s |"
        )
    per_step = [(c.node_s - c.model_s) / max(1, c.calls) * 1000 for c in crews]
    ratio = [c.node_s / c.model_s for c in crews]
    yield ""
    yield (
        f"p50: the CREW node takes {percentile(ratio, 50):.2f}x the model's own time; "
        f"framework overhead {percentile(per_step, 50):.0f} ms per agent step."
    )


def _fan(p: Plan, fan: FanResult) -> Iterator[str]:
    nominal = p.fan_streams / p.token_s
    window = (
        f"the {fan.window_s:.1f} s in which all {fan.streams} streamed at once"
        if fan.all_at_once
        else "the whole run (the streams never all overlapped for a second)"
    )
    yield (
        f"### Fan-out: {fan.streams} LLM nodes streaming at once, {p.fan_tokens} tokens "
        "each, one subscriber per execution"
    )
    yield ""
    yield (
        "| model rate (nominal) | model rate (sent) | delivered to subscribers | "
        "delivered / sent | behind at the end | latency p50 | p99 | server CPU per token p50 | "
        "tokens delivered | duplicated | completed |"
    )
    yield "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    yield (
        f"| {nominal:.0f}/s | {fan.model_rate:.0f}/s | {fan.delivered_rate:.0f}/s | "
        f"{fan.delivered_rate / fan.model_rate:.2f} | {fan.behind_s * 1000:.0f} ms | "
        f"{_ms(fan.latency_ms)} | {_ms(fan.latency_ms, 99)} | {_us(fan.cpu_us)} | "
        f"{fan.tokens}/{fan.expected} | {fan.duplicates} | {fan.completed}/{fan.streams} |"
    )
    yield ""
    yield f"Rates over {window}; latency from the chunk leaving the model to the frame."
    cpu = percentile(fan.cpu_us, 50) if fan.cpu_us else float("nan")
    if fan.delivered_rate < 0.9 * nominal:
        yield ""
        yield (
            f"Target missed: the subscribers got {fan.delivered_rate:.0f} tokens/s of the "
            f"{nominal:.0f}/s the model would stream. The server is CPU-bound: at {cpu:.0f} µs "
            f"per token one event loop relays at most ~{1e6 / max(cpu, 1e-9):.0f} tokens/s, so tokens "
            'queue up (the latency and "behind" above) and the nodes\' LLM calls start late '
            "(hence the model's own rate below nominal)."
        )


def report(p: Plan, r: RelayResult, crews: list[CrewRun], fan: FanResult) -> Iterator[str]:
    yield (
        f"AI runtime ({machine()}); provider: the scripted model in a process of its own "
        f"(bench/_paced_model.py), one token every {p.token_s * 1000:g} ms "
        f"({1 / p.token_s:.0f} tokens/s per stream), over real HTTP; API server: "
        "`crewgraph serve` with its in-process worker, PostgreSQL, Redis. CPU: the server "
        "process, all threads (PostgreSQL and Redis not included)."
    )
    for part in (_relay(p, r), _crew(crews), _fan(p, fan)):
        yield ""
        yield from part


# --------------------------------------------------------------------------- main


async def run(p: Plan) -> int:
    async with (
        paced_model(p) as model,
        services() as svc,
        server(svc, CREWGRAPH_LOCAL_MODEL_ENABLED="false") as srv,
    ):
        _phase("server up")
        floors = [Floor(kind, model, p.token_s) for kind in p.floors]
        for floor in floors:
            await floor.start()  # they import their library while the server warms up
        try:
            gql = GQL(srv.url)
            token, _ = await bench_tenant(gql)
            flows = {}
            for name in ("relay", "burst", "fan"):
                pid = await provider(gql, token, model, name)
                flows[name] = await create_flow(gql, token, llm_flow(pid))
            crew_provider = await provider(gql, token, model, "crew")
            crew_id = await three_agent_crew(gql, token, crew_provider)
            crew_flow_id = await create_flow(gql, token, crew_flow(crew_id))
            # Warm-up: the first LLM node imports LiteLLM, the first crew CrewAI.
            await asyncio.gather(
                follow(gql, token, flows["burst"]), follow(gql, token, crew_flow_id)
            )
            _phase("warmed up")
            r = await relay(gql, token, (flows["relay"], flows["burst"]), model, p, srv.pid, floors)
            _phase("relay measured")
            crews = [await crew_run(gql, token, crew_flow_id, model) for _ in range(p.crew_runs)]
            _phase("crew measured")
            fan = await fan_out(gql, token, flows["fan"], model, p, srv.pid)
            _phase("fan-out measured")
            await gql.aclose()
        finally:
            for floor in floors:
                floor.stop()
    print("\n".join(report(p, r, crews, fan)))
    lost = r.expected - r.tokens + fan.expected - fan.tokens + fan.duplicates
    failed = sum(c.status != "EXECUTION_COMPLETED" for c in crews) + fan.streams - fan.completed
    return 1 if lost or failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--short", action="store_true", help="smoke mode for CI")
    parser.add_argument("--token-ms", type=float, default=20.0, help="model's pace per token")
    parser.add_argument("--streams", type=int, default=None, help="concurrent LLM nodes")
    args = parser.parse_args()
    p = plan(args.short, args.token_ms, args.streams)
    sys.exit(asyncio.run(asyncio.wait_for(run(p), TIMEOUT)))


if __name__ == "__main__":
    main()

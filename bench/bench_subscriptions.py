"""Subscription fan-out: delivery latency, server CPU per delivery, memory per subscription.

    .venv/bin/python bench/bench_subscriptions.py           # 1 / 100 / 1000 subscribers, 10 s
    .venv/bin/python bench/bench_subscriptions.py --short   # CI smoke: 1 / 50 subscribers, 2 s

One execution emits LOG events at `--rate` per second (50) for `--seconds`; N WebSocket
clients (one graphql-transport-ws connection each, spread over client processes) follow
it with `executionEvents(afterSequence: 0)`. Each event carries the time it was emitted,
before it is stored and published, so the latency is end to end: PostgreSQL insert, Redis
publish, server fan-out, WebSocket, client parse. Measured side by side in the same run:

- multiplexed: the server as shipped (server/ws.py: one upstream per identical
  subscription, each event encoded once);
- stock: the same server with CREWGRAPH_SUBSCRIPTION_MULTIPLEX=false (Strawberry's own
  handler: every subscriber replays, follows and serialises on its own);
- raw Redis: N redis.asyncio pub/sub clients on one channel, a publisher at the same rate
  (no database, no GraphQL): the floor.

"CPU / delivery" is the server process's CPU time (user + system) while the events flow,
divided by events × subscribers; for raw Redis it is the redis-server process's. On
loopback the kernel work of the receiving side is largely charged to the sender, which is
why even Redis pays several µs per delivery here. "events/s achieved" is the rate the
run really emitted at (an overloaded server emits late; latency is measured from the
actual emission). "behind" is how long after the last event was emitted the last
subscriber received it. "RSS / idle subscription" opens M subscriptions that receive
nothing after their replay and divides the server's RSS growth by M.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import re
import secrets
import signal
import struct
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import flow_chain, machine, percentile, server, services

SUBSCRIBE = (
    "subscription E($id: ID!, $after: Int) { executionEvents(executionId: $id, "
    "afterSequence: $after) { sequence type data } }"
)
PER_PROCESS = 250


# --------------------------------------------------------------------------- client side


def _client_process(kind: str, url: str, token: str, target: str, count: int, conn: Any) -> None:
    asyncio.run(_clients(kind, url, token, target, count, conn))


T_RE = re.compile(rb'"t":\s*([0-9.eE+-]+)')


async def _clients(kind: str, url: str, token: str, target: str, count: int, conn: Any) -> None:
    """`count` lean clients (hand-rolled WebSocket / RESP readers, so the client side spends
    little CPU per message and the machine's cores go to the server under test)."""
    latencies = array("d")
    received: list[int] = []
    last_at = 0.0
    ready = asyncio.Event()
    opened = 0

    def mark_open() -> None:
        nonlocal opened
        opened += 1
        if opened == count:
            ready.set()

    async def ws_client() -> None:
        nonlocal last_at
        host, port, path = _split(url)
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        writer.write(_masked(json.dumps(init).encode()))
        sub = {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": SUBSCRIBE, "variables": {"id": target, "after": 0}},
        }
        writer.write(_masked(json.dumps(sub).encode()))
        mark_open()
        n = 0
        buf = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            now = time.time()
            buf += chunk
            done = False
            while len(buf) >= 2:
                opcode = buf[0] & 0x0F
                length = buf[1] & 0x7F
                offset = 2
                if length == 126:
                    if len(buf) < 4:
                        break
                    length = struct.unpack("!H", buf[2:4])[0]
                    offset = 4
                elif length == 127:
                    if len(buf) < 10:
                        break
                    length = struct.unpack("!Q", buf[2:10])[0]
                    offset = 10
                if len(buf) < offset + length:
                    break
                payload = buf[offset : offset + length]
                buf = buf[offset + length :]
                if opcode == 0x9:  # ping
                    writer.write(_masked(payload, 0xA))
                    continue
                if opcode == 0x8:
                    done = True
                    break
                if b'"type":"complete"' in payload:
                    done = True
                    break
                if b'"type":"next"' in payload:
                    n += 1
                    if b'"LOG"' in payload:
                        match = T_RE.search(payload)
                        if match:
                            latencies.append(now - float(match.group(1)))
                            last_at = max(last_at, now)
            if done:
                break
        received.append(n)
        writer.close()

    async def redis_client() -> None:
        nonlocal last_at
        host, port, _ = _split(url)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(target)}\r\n{target}\r\n".encode())
        await reader.readuntil(b":1\r\n")  # the confirmation
        mark_open()
        n = 0
        buf = b""
        finished = False
        while not finished:
            chunk = await reader.read(65536)
            if not chunk:
                break
            now = time.time()
            buf += chunk
            while True:  # *3 $7 message $<n> channel $<n> payload
                parts = buf.split(b"\r\n", 6)
                if len(parts) < 7:
                    break
                size = int(parts[5][1:])
                header = sum(len(x) + 2 for x in parts[:6])
                if len(buf) < header + size + 2:
                    break
                payload = buf[header : header + size]
                buf = buf[header + size + 2 :]
                if b'"end"' in payload:
                    finished = True
                    break
                n += 1
                match = T_RE.search(payload)
                if match:
                    latencies.append(now - float(match.group(1)))
                    last_at = max(last_at, now)
        received.append(n)
        writer.close()

    make = ws_client if kind == "ws" else redis_client
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(make()))
        if i % 25 == 24:
            await asyncio.sleep(0.02)  # do not stampede the server's accept queue
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    if failed:
        conn.send(("error", repr(failed[0].exception())))
        return
    conn.send(("ready", None))
    await asyncio.gather(*tasks)
    conn.send(("done", (latencies.tobytes(), received, last_at)))


def _split(url: str) -> tuple[str, int, str]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80, parsed.path or "/"


def _masked(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client frame (clients must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", length)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class Clients:
    def __init__(self, kind: str, url: str, token: str, target: str, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        remaining = n
        while remaining > 0:
            share = min(PER_PROCESS, remaining)
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_client_process, args=(kind, url, token, target, share, child), daemon=True
            )
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)
            remaining -= share

    async def wait(self, what: str, timeout: float) -> list[Any]:
        out = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            while not pipe.poll():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"clients not {what}")
                await asyncio.sleep(0.01)
            kind, payload = pipe.recv()
            if kind != what:
                raise RuntimeError(f"client process: {kind}: {payload}")
            out.append(payload)
        return out

    def close(self) -> None:
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def _merge(results: list[Any]) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    received: list[int] = []
    last = 0.0
    for blob, counts, last_at in results:
        values = array("d")
        values.frombytes(blob)
        latencies.extend(values)
        received.extend(counts)
        last = max(last, last_at)
    return latencies, received, last


# --------------------------------------------------------------------------- scenarios


async def _tenant(gql: Any) -> tuple[str, str]:
    reg = await gql.ok(
        "Register",
        {
            "input": {
                "tenantName": "bench",
                "email": f"b{uuid.uuid4().hex[:6]}@example.com",
                "password": "correct horse battery",
            }
        },
    )
    token = reg["register"]["accessToken"]
    tool = (
        await gql.ok(
            "CreateTool",
            {
                "input": {
                    "name": "t",
                    "description": "d",
                    "kind": "CUSTOM_PYTHON",
                    "config": {"code": "def run(i):\n    return i\n"},
                }
            },
            token=token,
        )
    )["createTool"]
    return token, tool["id"]


async def fan_out(srv: Any, n: int, rate: float, seconds: float) -> dict[str, Any]:
    from tests.support.client import GQL

    if True:
        gql = GQL(srv.url)
        token, tool_id = await _tenant(gql)
        gate = Path(tempfile.gettempdir()) / f"cgbench-gate-{secrets.token_hex(4)}"
        events = int(rate * seconds)
        flow = flow_chain(
            tool_id,
            [
                {
                    "testSleepSeconds": 0,
                    "testWaitForFile": str(gate),
                    "testLogEvents": events,
                    "testLogIntervalSeconds": 1 / rate,
                }
            ],
            f"fan-{uuid.uuid4().hex[:6]}",
        )
        flow_id = (await gql.ok("CreateFlow", {"input": flow}, token=token))["createFlow"]["id"]
        ident = (await gql.ok("ExecuteFlow", {"id": flow_id, "inputs": {}}, token=token))[
            "executeFlow"
        ]["id"]
        clients = Clients("ws", srv.url.replace("http", "ws") + "/graphql", token, ident, n)
        try:
            await clients.wait("ready", 300)
            await asyncio.sleep(0.5)
            proc = psutil.Process(srv.pid)
            if os.environ.get("BENCH_SERVER_RUNNER"):
                proc.send_signal(signal.SIGUSR1)  # a profiling wrapper: start measuring now
            c0 = sum(proc.cpu_times()[:2])
            if os.environ.get("BENCH_DEBUG"):
                print("cpu user/sys", proc.cpu_times()[:2], flush=True)
            t0 = time.time()
            gate.touch()
            results = await clients.wait("done", seconds * 20 + 300)
            cpu = sum(proc.cpu_times()[:2]) - c0
            if os.environ.get("BENCH_DEBUG"):
                print("cpu user/sys", proc.cpu_times()[:2], flush=True)
            rss = proc.memory_info().rss
        finally:
            clients.close()
            gate.unlink(missing_ok=True)
        log = (await gql.ok("ExecutionEventLog", {"id": ident, "first": 1000}, token=token))[
            "execution"
        ]["events"]
        await gql.aclose()
    latencies, received, last = _merge(results)
    expected = len(log)
    stamps = [e["data"]["t"] for e in log if e["type"] == "LOG" and "t" in (e["data"] or {})]
    achieved = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {
        "achieved": achieved,
        "n": n,
        "events": events,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "behind": max(0.0, last - (t0 + seconds)),
        "cpu_per_delivery": cpu / max(1, events * n),
        "cpu_per_event": cpu / max(1, events),
        "complete": sum(1 for r in received if r == expected),
        "subscribers": len(received),
        "rss": rss,
    }


async def raw_redis(svc: Any, n: int, rate: float, seconds: float) -> dict[str, Any]:
    import redis.asyncio as aioredis

    channel = f"cgbench:raw:{secrets.token_hex(4)}"
    clients = Clients("redis", svc.redis_url, "", channel, n)
    publisher = aioredis.from_url(svc.redis_url)
    events = int(rate * seconds)
    redis_proc = _redis_server()
    cpu = None
    try:
        await clients.wait("ready", 120)
        c0 = _cpu(redis_proc)
        start = time.monotonic()
        t0 = time.time()
        for i in range(events):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            await publisher.publish(channel, json.dumps({"t": time.time(), "i": i}))
        await publisher.publish(channel, json.dumps({"end": True}))
        results = await clients.wait("done", 120)
        if redis_proc is not None and c0 is not None:
            cpu = _cpu(redis_proc) - c0
    finally:
        clients.close()
        await publisher.aclose()
    latencies, received, last = _merge(results)
    out = {
        "n": n,
        "events": events,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "behind": max(0.0, last - (t0 + seconds)),
        "achieved": rate,
        "complete": sum(1 for r in received if r == events),
        "subscribers": len(received),
    }
    if cpu is not None:  # the Redis server's CPU: the floor of one socket write per delivery
        out["cpu_per_delivery"] = cpu / max(1, events * n)
        out["cpu_per_event"] = cpu / max(1, events)
    return out


def _redis_server() -> Any:
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("redis-server"):
            return proc
    return None


def _cpu(proc: Any) -> float | None:
    try:
        return float(sum(proc.cpu_times()[:2]))
    except (psutil.Error, AttributeError):
        return None


async def idle_rss(srv: Any, m: int) -> tuple[float, float]:
    """Server RSS growth per idle subscription (bytes): one per connection, then 50 per
    connection (the first batch stays open, so no freed memory is reused)."""
    import websockets

    from tests.support.client import GQL

    gql = GQL(srv.url)
    token, tool_id = await _tenant(gql)
    gate = Path(tempfile.gettempdir()) / f"cgbench-never-{secrets.token_hex(4)}"
    flow = flow_chain(tool_id, [{"testSleepSeconds": 0, "testWaitForFile": str(gate)}], "idle")
    flow_id = (await gql.ok("CreateFlow", {"input": flow}, token=token))["createFlow"]["id"]
    ident = (await gql.ok("ExecuteFlow", {"id": flow_id, "inputs": {}}, token=token))[
        "executeFlow"
    ]["id"]
    url = srv.url.replace("http", "ws") + "/graphql"
    proc = psutil.Process(srv.pid)
    sockets: list[Any] = []

    async def open_some(subscriptions: int, per_connection: int) -> None:
        for _ in range(max(1, subscriptions // per_connection)):
            ws = await websockets.connect(
                url, subprotocols=["graphql-transport-ws"], compression=None
            )
            init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
            await ws.send(json.dumps(init))
            await ws.recv()
            for j in range(per_connection):
                sub = {
                    "id": str(j),
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIBE, "variables": {"id": ident, "after": 0}},
                }
                await ws.send(json.dumps(sub))
            sockets.append(ws)

    async def settle() -> int:
        await asyncio.sleep(1.0)
        for ws in sockets:  # drain the replays so nothing is queued
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 0.01)
            except TimeoutError:
                pass
        await asyncio.sleep(0.5)
        return int(proc.memory_info().rss)

    try:
        await open_some(20, 1)  # warm every code path
        base = await settle()
        await open_some(m, 1)
        one_each = await settle()
        await open_some(m, 50)
        shared = await settle()
    finally:
        for ws in sockets:
            await ws.close()
        gate.touch()
        await asyncio.sleep(0.2)
        gate.unlink(missing_ok=True)
        await gql.aclose()
    return (one_each - base) / m, (shared - one_each) / m


# --------------------------------------------------------------------------- report


async def run(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.subscribers.split(",")]
    fan: dict[tuple[int, str], dict[str, Any]] = {}
    memory: dict[tuple[str, int], float] = {}
    modes = (("multiplexed", "true"), ("stock Strawberry", "false"))
    async with services() as svc:
        for label, flag in modes:
            async with server(svc, CREWGRAPH_SUBSCRIPTION_MULTIPLEX=flag) as srv:
                memory[(label, 1)], memory[(label, 50)] = await idle_rss(srv, args.idle)
                for n in counts:
                    if flag == "false" and n > args.stock_max:
                        continue
                    fan[(n, label)] = await fan_out(srv, n, args.rate, args.seconds)
                    print(f"{label} n={n}: {fan[(n, label)]}", file=sys.stderr, flush=True)
        for n in counts:
            fan[(n, "raw Redis pub/sub")] = await raw_redis(svc, n, args.rate, args.seconds)
    rows = []
    for n in counts:
        for label in ("multiplexed", "stock Strawberry", "raw Redis pub/sub"):
            r = fan.get((n, label))
            if r is None:
                rows.append(f"| {n} | {label} | skipped (over --stock-max) | | | | | |")
                continue
            cpu = (
                f"{r['cpu_per_delivery'] * 1e6:.1f} µs ({r['cpu_per_event'] * 1e3:.2f} ms)"
                if "cpu_per_delivery" in r
                else "–"
            )
            rows.append(
                f"| {n} | {label} | {r['achieved']:.0f}/s | {r['p50'] * 1000:.1f} ms | "
                f"{r['p99'] * 1000:.1f} ms | {r['behind']:.2f} s | {cpu} | "
                f"{r['complete']}/{r['subscribers']} |"
            )
    mem_rows = [
        f"| {label} | {args.idle} | {per} | {memory[(label, per)] / 1024:.1f} KB |"
        for (label, per) in memory
    ]
    print(
        "\n".join(
            [
                f"One execution emitting {args.rate:g} LOG events/s for {args.seconds:g} s; "
                f"N subscribers, one WebSocket each, lean clients in separate processes on "
                f"the same machine ({machine()}). Latency: event emitted → received by the "
                "client. CPU: server process (raw Redis: redis-server), user + system.",
                "",
                "| subscribers | server | events/s achieved | p50 | p99 | behind | CPU / delivery (per event) | complete streams |",
                "|---:|---|---:|---:|---:|---:|---:|---:|",
                *rows,
                "",
                "Server RSS growth per idle `executionEvents` subscription (after its replay):",
                "",
                "| server | subscriptions | per connection | RSS / subscription |",
                "|---|---:|---:|---:|",
                *mem_rows,
            ]
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="smoke mode for CI")
    parser.add_argument("--subscribers", default=None, help="comma-separated counts")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--idle", type=int, default=None, help="idle subscriptions for RSS")
    parser.add_argument("--stock-max", type=int, default=1000, help="largest N for stock")
    args = parser.parse_args()
    args.subscribers = args.subscribers or ("1,20" if args.short else "1,100,1000")
    args.seconds = args.seconds or (1.0 if args.short else 10.0)
    args.idle = args.idle or (50 if args.short else 1000)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

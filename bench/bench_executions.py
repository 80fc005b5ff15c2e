"""100 concurrent executions through the real API: time to complete and lost events.

    .venv/bin/python bench/bench_executions.py            # 100 concurrent, 3 rounds
    .venv/bin/python bench/bench_executions.py --short    # CI smoke: 20 concurrent, 1 round

A real server process (PostgreSQL, Redis, the in-process worker), and a client that, for
each execution, calls `executeFlow` and follows `executionEvents(afterSequence: 0)` over
graphql-transport-ws until the terminal event. The flow is the real-node one of the
acceptance check: INPUT → CONDITION → two OUTPUT branches, plus a TOOL node that emits
20 LOG events (test hook), so each execution stores and publishes ~28 events.

Measured side by side in the same run: the same executions one at a time (the floor),
then all at once. "Lost" compares, per execution, the events received live with the
events stored (sequence by sequence): it must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import bench_tenant, machine, percentile, server, services
from tests.support.client import GQL, op
from tests.support.ws import init, subscribe

LOGS = 20


def flow(tool_id: str) -> dict[str, Any]:
    return {
        "name": f"bench-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {
                "id": "work",
                "kind": "TOOL",
                "config": {"toolId": tool_id, "testSleepSeconds": 0, "testLogEvents": LOGS},
            },
            {"id": "check", "kind": "CONDITION", "config": {"expression": "inputs.score > 5"}},
            {"id": "high", "kind": "OUTPUT", "config": {"value": "high {{ inputs.score }}"}},
            {"id": "low", "kind": "OUTPUT", "config": {"value": "low {{ inputs.score }}"}},
        ],
        "edges": [
            {"source": "in", "target": "work"},
            {"source": "work", "target": "check"},
            {"source": "check", "target": "high", "branch": "true"},
            {"source": "check", "target": "low", "branch": "false"},
        ],
    }


async def one(gql: GQL, token: str, flow_id: str, score: int) -> tuple[float, str, list[int]]:
    """Start an execution and follow its events; (seconds to terminal, id, sequences)."""
    async with gql.connect_ws() as ws:
        await init(ws, {"authorization": f"Bearer {token}"})
        t0 = time.perf_counter()
        started = await gql.ok(
            "ExecuteFlow", {"id": flow_id, "inputs": {"score": score}}, token=token
        )
        ident = started["executeFlow"]["id"]
        await subscribe(ws, "e", op("ExecutionEvents"), {"executionId": ident, "afterSequence": 0})
        sequences: list[int] = []
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if msg.get("type") == "complete":
                break
            if msg.get("type") != "next":
                continue
            event = msg["payload"]["data"]["executionEvents"]
            sequences.append(event["sequence"])
            if event["type"].startswith("EXECUTION_") and event["type"] != "EXECUTION_STARTED":
                elapsed = time.perf_counter() - t0
        return elapsed, ident, sequences


async def stored(gql: GQL, token: str, ident: str) -> list[int]:
    data = await gql.ok("ExecutionEventLog", {"id": ident, "first": 1000}, token=token)
    return [e["sequence"] for e in data["execution"]["events"]]


async def run(concurrency: int, rounds: int) -> int:
    async with services() as svc, server(svc) as srv:
        gql = GQL(srv.url)
        token, tool_id = await bench_tenant(gql)
        flow_id = (await gql.ok("CreateFlow", {"input": flow(tool_id)}, token=token))["createFlow"][
            "id"
        ]
        await one(gql, token, flow_id, 1)  # warm-up

        alone: list[float] = []
        for i in range(min(10, concurrency)):
            seconds, _, _ = await one(gql, token, flow_id, i)
            alone.append(seconds)

        together: list[float] = []
        lost = 0
        received = 0
        walls: list[float] = []
        proc = psutil.Process(srv.pid)
        if os.environ.get("BENCH_SERVER_RUNNER"):
            proc.send_signal(signal.SIGUSR1)  # a profiling wrapper: start measuring now
        cpu = 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            c0 = sum(proc.cpu_times()[:2])
            results = await asyncio.gather(
                *(one(gql, token, flow_id, i % 10) for i in range(concurrency))
            )
            walls.append(time.perf_counter() - t0)
            cpu += sum(proc.cpu_times()[:2]) - c0
            for seconds, ident, sequences in results:
                together.append(seconds)
                log = await stored(gql, token, ident)
                received += len(sequences)
                lost += len(set(log) - set(sequences)) + (len(sequences) - len(set(sequences)))
                if sequences != log:
                    lost += 1 if not set(log) - set(sequences) else 0
        await gql.aclose()

    events_per = received / max(1, len(together))
    table = [
        f"Executions through the API ({machine()}); flow: INPUT → TOOL (20 LOG events) → "
        f"CONDITION → 2 OUTPUTs, ~{events_per:.0f} events each; in-process worker; "
        f"time from `executeFlow` to the terminal event on the subscription.",
        "",
        "| run | executions | p50 | p99 | max | wall | executions/s | server CPU / execution | events received | lost or duplicated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| one at a time | {len(alone)} | {percentile(alone, 50) * 1000:.0f} ms | "
        f"{percentile(alone, 99) * 1000:.0f} ms | {max(alone) * 1000:.0f} ms | – | – | – | – | – |",
        f"| {concurrency} concurrent × {rounds} | {len(together)} | "
        f"{percentile(together, 50) * 1000:.0f} ms | {percentile(together, 99) * 1000:.0f} ms | "
        f"{max(together) * 1000:.0f} ms | {statistics.mean(walls):.2f} s | "
        f"{concurrency / statistics.mean(walls):.0f} | {cpu / len(together) * 1000:.0f} ms | "
        f"{received} | {lost} |",
    ]
    print("\n".join(table))
    return 1 if lost else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="smoke mode for CI")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    concurrency = args.concurrency or (20 if args.short else 100)
    rounds = args.rounds or (1 if args.short else 3)
    sys.exit(asyncio.run(run(concurrency, rounds)))


if __name__ == "__main__":
    main()

"""Tool sandbox latency and throughput, side by side with a plain subprocess in one run.

    .venv/bin/python bench/bench_sandbox.py            # 30 sequential runs per variant, 60 concurrent
    .venv/bin/python bench/bench_sandbox.py --short    # CI smoke: 5 sequential, 20 concurrent
    .venv/bin/python bench/bench_sandbox.py --backends bubblewrap   # only some variants

Variants (each runs the same trivial tool, ``def run(x): return {"y": x["n"] + 1}``,
through sandbox/runner.py, so the baseline pays the same interpreter start-up):

- subprocess: ``python3 -I -B -c <runner>`` on the host, no isolation (the floor);
- docker-cold: a fresh locked-down container per run (create, attach, start, remove);
- docker-warm: the per-tenant warm pool (a container of that tenant, created, attached
  and started in the background after the previous run; one run per container);
- bubblewrap-cold: namespaces + rlimits (+ a cgroup per run when the host allows),
  started for the run;
- bubblewrap: the same, pre-started in the background after the previous run of that
  shape (the production setting, ``CREWGRAPH_SANDBOX_WARM_POOL``).

Targets (ratio of p50 to the subprocess's p50): docker-cold <= 5, docker-warm <= 2,
bubblewrap <= 1.3.

Latency: sequential runs, the variants interleaved run by run (the machine is shared and
noisy; compare ratios, not absolute times). Throughput: ``--concurrency`` runs in flight
at once (20 by default), spread over 4 tenants. Variants whose backend is unavailable are
listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.errors import NotConfigured
from domain.sandbox import Sandbox, SandboxLimits, SandboxRequest
from sandbox import docker_available
from sandbox.output import runner_source

TOOL = 'def run(x):\n    return {"y": x["n"] + 1}\n'
LIMITS = SandboxLimits(timeout_seconds=30)
Runner = Callable[[int, str], Awaitable[bool]]
TARGETS = {"docker-cold": 5.0, "docker-warm": 2.0, "bubblewrap": 1.3}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def subprocess_runner(python: str) -> Runner:
    source = runner_source()

    async def run(n: int, tenant: str) -> bool:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-I",
            "-B",
            "-c",
            source,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        line = json.dumps({"code": TOOL, "input": {"n": n}, "scratch": f"bench-{n}"})
        out, _ = await proc.communicate(line.encode() + b"\n")
        result = json.loads(out.splitlines()[-1])
        return bool(result["ok"] and result["output"] == {"y": n + 1})

    return run


def sandbox_runner(sb: Sandbox) -> Runner:
    async def run(n: int, tenant: str) -> bool:
        result = await sb.run(
            SandboxRequest(tenant_id=tenant, code=TOOL, input={"n": n}, limits=LIMITS)
        )
        return result.ok and result.output == {"y": n + 1}

    return run


async def open_variants(
    wanted: set[str], python: str
) -> tuple[dict[str, Runner], dict[str, str], list[Sandbox]]:
    runners: dict[str, Runner] = {"subprocess": subprocess_runner(python)}
    skipped: dict[str, str] = {}
    opened: list[Sandbox] = []
    if wanted & {"docker-cold", "docker-warm"}:
        why = await docker_available()
        from sandbox.docker import DockerSandbox

        for name, warm in (("docker-cold", False), ("docker-warm", True)):
            if name not in wanted:
                continue
            if why is not None:
                skipped[name] = why
                continue
            try:
                sb: Sandbox = await DockerSandbox.open(warm_pool=warm, warm_idle_per_tenant=8)
            except NotConfigured as exc:
                skipped[name] = exc.message
                continue
            opened.append(sb)
            runners[name] = sandbox_runner(sb)
    from sandbox.bubblewrap import BubblewrapSandbox

    for name, prestart in (("bubblewrap-cold", 0), ("bubblewrap", 1)):
        if name not in wanted:
            continue
        try:
            bw = await BubblewrapSandbox.open(python=python, prestart=prestart)
            opened.append(bw)
            runners[name] = sandbox_runner(bw)
        except NotConfigured as exc:
            skipped[name] = exc.message
    return runners, skipped, opened


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="CI smoke mode")
    parser.add_argument("--runs", type=int, help="sequential runs per variant")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--total", type=int, help="runs in the throughput phase")
    parser.add_argument("--backends", default="docker-cold,docker-warm,bubblewrap-cold,bubblewrap")
    parser.add_argument(
        "--python", default="/usr/bin/python3", help="host interpreter (baseline and bubblewrap)"
    )
    args = parser.parse_args()
    runs = args.runs or (5 if args.short else 30)
    total = args.total or (args.concurrency if args.short else args.concurrency * 3)
    wanted = {b.strip() for b in args.backends.split(",") if b.strip()}

    runners, skipped, opened = await open_variants(wanted, args.python)
    try:
        # warm-up: one run each (image pages, warm containers, bytecode caches)
        for name, run in runners.items():
            if not await run(0, "bench-warmup"):
                print(f"{name}: warm-up run failed", file=sys.stderr)
                return 1
        latencies: dict[str, list[float]] = {name: [] for name in runners}
        for i in range(runs):
            for name, run in runners.items():
                started = time.perf_counter()
                ok = await run(i, "bench-a")
                latencies[name].append((time.perf_counter() - started) * 1000)
                if not ok:
                    print(f"{name}: run {i} failed", file=sys.stderr)
                    return 1
        throughput: dict[str, float] = {}
        for name, run in runners.items():
            gate = asyncio.Semaphore(args.concurrency)

            async def one(i: int, run: Runner = run, gate: asyncio.Semaphore = gate) -> bool:
                async with gate:
                    return await run(i, f"bench-t{i % 4}")

            started = time.perf_counter()
            results = await asyncio.gather(*(one(i) for i in range(total)))
            elapsed = time.perf_counter() - started
            if not all(results):
                print(
                    f"{name}: {results.count(False)} of {total} concurrent runs failed",
                    file=sys.stderr,
                )
                return 1
            throughput[name] = total / elapsed
    finally:
        for sb in opened:
            await sb.close()

    base = statistics.median(latencies["subprocess"])
    base_tp = throughput["subprocess"]
    print(
        f"\nTool sandbox: trivial python tool, {runs} sequential runs per variant (interleaved), "
        f"{total} runs at concurrency {args.concurrency}\n"
    )
    header = f"{'variant':<15} {'p50 ms':>8} {'p95 ms':>8} {'x subprocess':>13} {'runs/s @' + str(args.concurrency):>11} {'x subprocess':>13}"
    print(header)
    print("-" * len(header))
    for name, values in latencies.items():
        p50, p95 = statistics.median(values), percentile(values, 95)
        print(
            f"{name:<15} {p50:>8.1f} {p95:>8.1f} {p50 / base:>13.2f} {throughput[name]:>11.1f} "
            f"{throughput[name] / base_tp:>13.2f}"
        )
    for name, why in skipped.items():
        print(f"{name:<15} skipped: {why}")
    print()
    for name, target in TARGETS.items():
        if name in latencies:
            ratio = statistics.median(latencies[name]) / base
            verdict = "met" if ratio <= target else "MISSED"
            print(f"target {name} p50 <= {target}x subprocess: {ratio:.2f}x {verdict}")
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

"""A small closed-loop HTTP/1.1 load generator (wrk is not installed here), run in a
process of its own so the client's CPU is not the server's: `-c` keep-alive connections
each POST one body back to back for `-d` seconds; optionally one more connection posts
`--side` bodies back to back (e.g. logins beside the measured load). Prints JSON:
requests, rps, p50/p90/p99 in ms, errors (non-200 or a body with "errors")."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


async def _client(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    until: float,
    lat: list[float] | None,
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            writer.write(request)
            status_line = await reader.readline()
            length = -1
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            payload = await reader.readexactly(length) if length >= 0 else b""
            if lat is not None:
                lat.append(time.monotonic() - started)
            if b" 200 " not in status_line or b'"errors"' in payload:
                errors.append(1)
    finally:
        writer.close()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("body")
    ap.add_argument("-c", type=int, default=32)
    ap.add_argument("-d", type=float, default=5.0)
    ap.add_argument("--token", default="")
    ap.add_argument("--side", default="", help="a URL path and a body: 'path body'")
    args = ap.parse_args()
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    lat: list[float] = []
    errors: list[int] = []
    side_errors: list[int] = []
    side_lat: list[float] = []
    until = time.monotonic() + args.d
    started = time.monotonic()
    tasks = [
        _client(host, port, url.path, args.body.encode(), headers, until, lat, errors)
        for _ in range(args.c)
    ]
    if args.side:
        path, _, body = args.side.partition(" ")
        tasks.append(_client(host, port, path, body.encode(), {}, until, side_lat, side_errors))
    await asyncio.gather(*tasks)
    took = time.monotonic() - started
    print(
        json.dumps(
            {
                "requests": len(lat),
                "rps": len(lat) / took,
                "p50": _pct(lat, 50),
                "p90": _pct(lat, 90),
                "p99": _pct(lat, 99),
                "errors": len(errors),
                "side_requests": len(side_lat),
                "side_errors": len(side_errors),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())

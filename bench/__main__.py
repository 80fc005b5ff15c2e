"""`make bench`: run every benchmark side by side and write docs/benchmarks.md.

Each `bench/bench_*.py` prints its own markdown table with ratios measured in the
same run (this machine is shared and noisy: compare ratios, not absolute times).
`--short` is the smoke mode CI runs; `--no-write` leaves docs/ alone. Naming benches
(`python -m bench tenants`) rewrites only their sections of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", action="store_true", help="smoke mode (seconds, not minutes)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("only", nargs="*", help="bench names, e.g. engine sandbox")
    args = parser.parse_args()
    scripts = sorted((ROOT / "bench").glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    sections = [
        "# Benchmarks",
        "",
        f"Run with `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, Python {platform.python_version()}"
        + (" (short mode)" if args.short else "")
        + ". Ratios are measured side by side in the same run.",
    ]
    failed = []
    for script in scripts:
        started = time.monotonic()
        cmd = [sys.executable, str(script), *(["--short"] if args.short else [])]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        took = time.monotonic() - started
        print(out.stdout, end="")
        if out.returncode != 0:
            failed.append(script.stem)
            print(out.stderr[-3000:], file=sys.stderr)
        sections += [
            "",
            f"## {script.stem.removeprefix('bench_').replace('_', ' ')}",
            "",
            f"`{script.relative_to(ROOT)}`, {took:.1f} s",
            "",
            out.stdout.strip(),
        ]
    if not args.no_write:
        (ROOT / "docs").mkdir(exist_ok=True)
        doc = ROOT / "docs" / "benchmarks.md"
        text = "\n".join(sections) + "\n"
        if args.only and doc.exists():
            # A subset run replaces its own sections and keeps the others' results.
            text = _merge(doc.read_text(), text, args.short)
        doc.write_text(text)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _split(text: str) -> tuple[str, dict[str, str]]:
    """The text before the first `## ` section, and the sections by heading, in order."""
    head, *parts = text.split("\n## ")
    sections = {}
    for part in parts:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body
    return head, sections


def _merge(existing: str, fresh: str, short: bool) -> str:
    head, old = _split(existing)
    _, new = _split(fresh)
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC" + (" (short mode)" if short else "")
    for title, body in new.items():
        old[title] = f"\nRerun on its own on {when}.\n" + body
    ordered = sorted(old, key=lambda t: (t not in _bench_titles(), t))
    merged = head.rstrip("\n") + "\n"
    for title in ordered:
        merged += f"\n## {title}\n{old[title].rstrip()}\n"
    return merged


def _bench_titles() -> set[str]:
    return {
        p.stem.removeprefix("bench_").replace("_", " ") for p in (ROOT / "bench").glob("bench_*.py")
    }


if __name__ == "__main__":
    raise SystemExit(main())

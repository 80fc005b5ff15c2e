#!/usr/bin/env python3
"""Browser assets the API serves itself, from the npm registry through package-lock.json.

    python3 frontend/vendor.py           # `npm ci` when node_modules differs from the lock,
                                         # then copy the served files to server/static/vendor/
    python3 frontend/vendor.py --check   # exit 1 unless server/static/vendor/ is exactly
                                         # what the lock gives (no npm, no network)

`npm ci` installs exactly the lock's versions and verifies every tarball against the lock's
integrity hash; this script then copies the few built files the pages load (UMD/ESM builds,
styles, licenses) and writes MANIFEST.json: each package's locked version and integrity and
each file's SHA-256. `--check` (and tests/browser/test_vendor_assets.py) proves what is
served is byte for byte what the locked packages hold. Node.js and npm are needed at install
time only; nothing is downloaded when the server runs. Standard library only.

Exit codes: 0 done, 1 check failed, 3 npm is needed but missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FRONTEND = Path(__file__).resolve().parent
ROOT = FRONTEND.parent
LOCK = FRONTEND / "package-lock.json"
NODE_MODULES = FRONTEND / "node_modules"
VENDOR = ROOT / "server" / "static" / "vendor"
MANIFEST = "MANIFEST.json"

# package -> [(file in the package, path under vendor/)]; a trailing "/" copies every file
# the source glob matches into that directory.
FILES: dict[str, list[tuple[str, str]]] = {
    "react": [
        ("umd/react.production.min.js", "react/react.production.min.js"),
        ("LICENSE", "react/LICENSE"),
    ],
    "react-dom": [
        ("umd/react-dom.production.min.js", "react-dom/react-dom.production.min.js"),
        ("LICENSE", "react-dom/LICENSE"),
    ],
    "graphiql": [
        ("graphiql.min.js", "graphiql/graphiql.min.js"),
        ("graphiql.min.css", "graphiql/graphiql.min.css"),
        ("LICENSE", "graphiql/LICENSE"),
    ],
    "@graphiql/plugin-explorer": [
        ("dist/index.umd.js", "graphiql-plugin-explorer/index.umd.js"),
        ("dist/style.css", "graphiql-plugin-explorer/style.css"),
        ("package.json", "graphiql-plugin-explorer/package.json"),  # its license (MIT): no file
    ],
    "graphql-ws": [
        # UMD (a global `graphqlWs`) for classic scripts, ES modules for `import`.
        ("umd/graphql-ws.min.js", "graphql-ws/graphql-ws.min.js"),
        ("dist/client.js", "graphql-ws/client.js"),
        ("dist/common-*.js", "graphql-ws/"),  # the chunk client.js imports (hashed name)
        ("LICENSE.md", "graphql-ws/LICENSE.md"),
    ],
}


def lock_entries() -> dict[str, dict[str, object]]:
    """The lock's `packages` (path -> entry), without the root project."""
    packages = json.loads(LOCK.read_text())["packages"]
    return {path: entry for path, entry in packages.items() if path}


def locked(package: str) -> dict[str, str]:
    entry = lock_entries().get(f"node_modules/{package}")
    if entry is None:
        raise SystemExit(f"vendor: {package} is not in {LOCK}")
    return {"version": str(entry["version"]), "integrity": str(entry["integrity"])}


def installed_matches_lock() -> bool:
    """Whether node_modules holds exactly the lock's packages (npm's own record of what it
    installed, node_modules/.package-lock.json, against the lock, version and integrity)."""
    hidden = NODE_MODULES / ".package-lock.json"
    if not hidden.exists():
        return False
    have = json.loads(hidden.read_text()).get("packages", {})
    for path, entry in lock_entries().items():
        got = have.get(path)
        if got is None:
            if entry.get("optional"):
                continue  # an optional package for another platform
            return False
        if got.get("version") != entry.get("version"):
            return False
        if got.get("integrity") != entry.get("integrity"):
            return False
    return True


def npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        print(
            "vendor: npm is missing; install Node.js and npm (Debian: apt-get install npm) "
            "and run `make install` again: GraphiQL and the dashboard need the locked "
            "frontend packages",
            file=sys.stderr,
        )
        raise SystemExit(3)
    # --ignore-scripts: no package's install hook runs; every file used is a prebuilt one.
    cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    subprocess.run(cmd, cwd=FRONTEND, check=True)


def source_files() -> dict[str, tuple[str, Path]]:
    """vendor path -> (package, file in node_modules), every glob expanded."""
    out: dict[str, tuple[str, Path]] = {}
    for package, pairs in FILES.items():
        base = NODE_MODULES / package
        for src, dest in pairs:
            matches = sorted(base.glob(src)) if "*" in src else [base / src]
            if not matches or not all(m.is_file() for m in matches):
                raise SystemExit(f"vendor: {package} has no {src} (node_modules incomplete?)")
            for m in matches:
                out[dest + m.name if dest.endswith("/") else dest] = (package, m)
    return out


def expected_manifest() -> tuple[dict[str, object], dict[str, Path]]:
    """The manifest the lock and node_modules give, and vendor path -> source file."""
    packages: dict[str, dict[str, str]] = {}
    for package in FILES:
        lock = locked(package)
        meta = json.loads((NODE_MODULES / package / "package.json").read_text())
        if meta.get("version") != lock["version"]:
            raise SystemExit(
                f"vendor: node_modules has {package}@{meta.get('version')}, "
                f"the lock {lock['version']}: run `make install`"
            )
        packages[package] = lock
    files: dict[str, dict[str, str]] = {}
    sources: dict[str, Path] = {}
    for dest, (package, path) in sorted(source_files().items()):
        files[dest] = {
            "package": package,
            "source": path.relative_to(NODE_MODULES / package).as_posix(),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        sources[dest] = path
    manifest: dict[str, object] = {
        "about": "written by frontend/vendor.py from frontend/package-lock.json; do not edit",
        "packages": packages,
        "files": files,
    }
    return manifest, sources


def served_files(vendor: Path) -> dict[str, str]:
    """vendor path -> SHA-256 of every file now under `vendor` (the manifest excluded)."""
    return {
        p.relative_to(vendor).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(vendor.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def check(vendor: Path = VENDOR) -> list[str]:
    """What differs between `vendor` and what the lock and node_modules give."""
    if not (vendor / MANIFEST).exists():
        return [f"{vendor / MANIFEST} is missing: run `make install`"]
    manifest, _ = expected_manifest()
    problems: list[str] = []
    current = json.loads((vendor / MANIFEST).read_text())
    if current != manifest:
        problems.append(f"{vendor / MANIFEST} differs from what the lock gives")
    want = {dest: f["sha256"] for dest, f in manifest["files"].items()}  # type: ignore[attr-defined]
    have = served_files(vendor)
    for dest in sorted(set(want) | set(have)):
        if dest not in have:
            problems.append(f"missing: {dest}")
        elif dest not in want:
            problems.append(f"not from the lock: {dest}")
        elif have[dest] != want[dest]:
            problems.append(f"changed: {dest}")
    return problems


def build(vendor: Path = VENDOR) -> None:
    manifest, sources = expected_manifest()
    vendor.parent.mkdir(parents=True, exist_ok=True)
    # Built beside, then swapped in: a running server never serves a half-copied tree.
    staging = Path(tempfile.mkdtemp(prefix=".vendor-", dir=vendor.parent))
    try:
        for dest, src in sources.items():
            target = staging / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        old = vendor.with_name(f".vendor-old-{os.getpid()}")
        if vendor.exists():
            vendor.rename(old)
        staging.rename(vendor)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify only; no npm, no copy")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        if not installed_matches_lock():
            print("vendor: node_modules differs from the lock: run `make install`", file=sys.stderr)
            return 1
        problems = check()
        for p in problems:
            print(f"vendor: {p}", file=sys.stderr)
        return 1 if problems else 0
    if not installed_matches_lock():
        npm_ci()
    if check():
        build()
        if not args.quiet:
            print(f"vendor: {VENDOR.relative_to(ROOT)} written from the lock", file=sys.stderr)
    elif not args.quiet:
        print(f"vendor: {VENDOR.relative_to(ROOT)} matches the lock", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

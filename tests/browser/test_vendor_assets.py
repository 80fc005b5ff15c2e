"""What server/static/vendor serves is what frontend/package-lock.json locks: the manifest's
versions and integrity hashes are the lock's, every served file is the manifest's (by
SHA-256, none extra), and, where node_modules is installed (`make install`), each file is
byte for byte the one in the locked package `npm ci` verified against those hashes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
VENDOR = ROOT / "server" / "static" / "vendor"


def _vendor_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "crewgraph_frontend_vendor", FRONTEND / "vendor.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest() -> dict[str, Any]:
    path = VENDOR / "MANIFEST.json"
    if not path.exists():
        reason = f"{path} is missing: `make install` copies it (needs npm)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def test_package_json_pins_exact_versions_and_the_lock_agrees() -> None:
    package = json.loads((FRONTEND / "package.json").read_text())
    lock = json.loads((FRONTEND / "package-lock.json").read_text())
    deps = package["dependencies"]
    assert {
        "graphiql",
        "@graphiql/plugin-explorer",
        "react",
        "react-dom",
        "graphql",
        "graphql-ws",
    } <= set(deps)
    for name, version in deps.items():
        assert version[0].isdigit(), f"{name}: pin an exact version, not {version!r}"
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == version, name
    assert lock["packages"][""]["dependencies"] == deps
    for path, entry in lock["packages"].items():
        if path:
            assert entry.get("integrity", "").startswith("sha512-"), path
            # The lock names no registry host: npm uses whichever it is configured with.
            assert "resolved" not in entry, path


def test_manifest_matches_the_lock_and_every_served_file() -> None:
    manifest = _manifest()
    lock = json.loads((FRONTEND / "package-lock.json").read_text())["packages"]
    vendor = _vendor_module()
    assert set(manifest["packages"]) == set(vendor.FILES)
    for name, pinned in manifest["packages"].items():
        entry = lock[f"node_modules/{name}"]
        assert pinned == {"version": entry["version"], "integrity": entry["integrity"]}, name
    served = {
        p.relative_to(VENDOR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name != "MANIFEST.json"
    }
    assert served == {dest: f["sha256"] for dest, f in manifest["files"].items()}
    assert {f["package"] for f in manifest["files"].values()} == set(vendor.FILES)


def test_served_files_are_the_locked_packages_files() -> None:
    _manifest()
    vendor = _vendor_module()
    if not vendor.installed_matches_lock():
        reason = "frontend/node_modules is missing or not the lock's (make install)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    assert vendor.check() == []


def test_check_catches_a_changed_missing_or_extra_file(tmp_path: Path) -> None:
    """The check fails for each way the served tree can drift from the lock."""
    _manifest()
    vendor = _vendor_module()
    if not vendor.installed_matches_lock():
        pytest.skip("frontend/node_modules is missing or not the lock's (make install)")
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    assert vendor.check(copy) == []

    script = copy / "graphiql" / "graphiql.min.js"
    script.write_bytes(script.read_bytes() + b"\n;fetch('https://cdn.example/x')")
    assert vendor.check(copy) == ["changed: graphiql/graphiql.min.js"]
    script.unlink()
    assert vendor.check(copy) == ["missing: graphiql/graphiql.min.js"]
    shutil.copy(VENDOR / "graphiql" / "graphiql.min.js", script)
    (copy / "react" / "extra.js").write_text("alert(1)")
    assert vendor.check(copy) == ["not from the lock: react/extra.js"]
    (copy / "react" / "extra.js").unlink()
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    manifest["packages"]["react"]["version"] = "0.0.0"
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    assert vendor.check(copy) == [f"{copy / 'MANIFEST.json'} differs from what the lock gives"]

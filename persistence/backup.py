"""Tenant backups: one tar.gz per run holding, for each tenant, its PostgreSQL schema
(`pg_dump` custom format, made by binaries matching the server's major version), its rows
in `public` (any table with a `tenant_id` column, plus the tenant row) as JSON, and its
MongoDB documents (every collection, filtered on `tenant_id`) as canonical extended JSON,
with a manifest (`manifest.json`) naming the format, time, tenants, alembic revisions, the
master key's fingerprint and a secret sealed with it, and the sha256 of every member.

Restoring checks the checksums and the master key (fingerprint and a real decryption)
before it touches anything, refuses tenants that exist unless `replace`, then restores
and migrates the restored schemas to the installation's head."""

from __future__ import annotations

import asyncio
import base64
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
from bson import json_util
from pymongo import AsyncMongoClient

from domain.secrets import Sealed, SecretError

FORMAT = "crewgraph-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CANARY = "crewgraph backup key check"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and what to do."""


class KeyBox(Protocol):
    """What this module needs of server/crypto.py's boxes (sealing and opening)."""

    @property
    def current_key_id(self) -> str: ...

    def seal(self, plaintext: str, context: str) -> Sealed: ...

    def open(self, sealed: Sealed, context: str) -> str: ...


@dataclass
class TenantSummary:
    id: str
    slug: str
    schema: str
    rows: dict[str, int] = field(default_factory=dict)


def _libpq_dsn(database_url: str) -> str:
    return re.sub(r"^postgresql\+\w+://", "postgresql://", database_url)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- PostgreSQL client binaries ----------------------------------------------------


def _candidate_bins() -> list[Path]:
    dirs: list[Path] = []
    try:
        import pgserver

        dirs.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    dirs += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    return [d for d in dirs if (d / "pg_dump").is_file() and (d / "pg_restore").is_file()]


def _major(version_text: str) -> int:
    found = re.search(r"(\d+)(?:\.(\d+))?", version_text)
    if not found:
        raise BackupError(f"cannot read a PostgreSQL version from {version_text!r}")
    return int(found.group(1))


def find_pg_bin(server_version: str) -> Path:
    """The directory of a pg_dump/pg_restore pair for a server of `server_version`: the
    same major version if there is one, else the oldest newer one (pg_dump refuses
    servers newer than itself)."""
    wanted = _major(server_version)
    found: dict[int, Path] = {}
    for d in _candidate_bins():
        try:
            out = subprocess.run(
                [str(d / "pg_dump"), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        version = re.search(r"\)\s*(\d+)", out)
        if version:
            found.setdefault(int(version.group(1)), d)
    if wanted in found:
        return found[wanted]
    newer = sorted(v for v in found if v > wanted)
    if newer:
        return found[newer[0]]
    have = ", ".join(f"{v} ({p})" for v, p in sorted(found.items())) or "none"
    raise BackupError(
        f"no pg_dump/pg_restore for PostgreSQL {wanted} (server {server_version}); found: "
        f"{have}. Install the PostgreSQL {wanted} client tools (e.g. postgresql-client-{wanted})"
    )


def _run(cmd: list[str], dsn: str, what: str) -> bytes:
    # The password goes through the environment, not the command line (`ps` shows that).
    parts = urlsplit(dsn)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        dsn = urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))
    done = subprocess.run([*cmd, dsn], capture_output=True, env=env, timeout=600)
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


# ---- public rows ------------------------------------------------------------------


async def _public_tables(conn: asyncpg.Connection) -> list[str]:
    """`public` tables keyed by tenant, parents before children (foreign keys)."""
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY table_name"
    )
    tables = ["tenants", *(r["table_name"] for r in rows if r["table_name"] != "tenants")]
    edges = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent "
        "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE c.contype = 'f' AND n.nspname = 'public'"
    )
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for e in edges:
        child, parent = e["child"].removeprefix("public."), e["parent"].removeprefix("public.")
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    ordered: list[str] = []
    while parents:
        ready = sorted(t for t, p in parents.items() if not (p - set(ordered)))
        if not ready:  # a cycle: keep the rest in name order
            ready = sorted(parents)
        for t in ready:
            ordered.append(t)
            parents.pop(t)
    return ordered


async def _insert_columns(conn: asyncpg.Connection, table: str) -> list[str]:
    """Columns a restore writes: identity columns are left to the target's sequence."""
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = $1 AND is_identity = 'NO' AND is_generated = 'NEVER' "
        "ORDER BY ordinal_position",
        table,
    )
    return [r["column_name"] for r in rows]


def _key_column(table: str) -> str:
    return "id" if table == "tenants" else "tenant_id"


async def _public_rows(conn: asyncpg.Connection, tenant_id: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for table in await _public_tables(conn):
        rows = await conn.fetch(
            f'SELECT row_to_json(t)::text AS j FROM public."{table}" t '
            f'WHERE t."{_key_column(table)}"::text = $1',
            tenant_id,
        )
        out[table] = [json.loads(r["j"]) for r in rows]
    return out


async def _delete_public(conn: asyncpg.Connection, tenant_id: str) -> None:
    for table in reversed(await _public_tables(conn)):
        await conn.execute(
            f'DELETE FROM public."{table}" WHERE "{_key_column(table)}"::text = $1', tenant_id
        )


async def _insert_public(conn: asyncpg.Connection, rows: dict[str, list[Any]]) -> None:
    known = await _public_tables(conn)
    unknown = sorted(set(rows) - set(known))
    if unknown:
        raise BackupError(f"the archive has rows for tables this installation lacks: {unknown}")
    for table in known:
        data = rows.get(table) or []
        if not data:
            continue
        cols = ", ".join(f'"{c}"' for c in await _insert_columns(conn, table))
        await conn.execute(
            f'INSERT INTO public."{table}" ({cols}) SELECT {cols} FROM '
            f'json_populate_recordset(NULL::public."{table}", $1::json)',
            json.dumps(data),
        )


# ---- the archive ------------------------------------------------------------------


def _key_check(box: KeyBox, created_at: str) -> dict[str, str]:
    sealed = box.seal(_CANARY, f"backup:{created_at}")
    return {"key_id": sealed.key_id, "sealed": base64.b64encode(sealed.blob).decode()}


def _check_key(box: KeyBox, manifest: dict[str, Any]) -> None:
    fingerprint = manifest.get("key_fingerprint")
    check = manifest.get("key_check") or {}
    mismatch = (
        f"this archive was made with the master key {fingerprint}, but this installation's "
        f"CREWGRAPH_SECRET_KEY is {box.current_key_id}: restore with the same key (its stored "
        "API keys and webhook secrets are sealed with it)"
    )
    if box.current_key_id == "none":
        raise BackupError("restoring needs CREWGRAPH_SECRET_KEY (the key the backup was made with)")
    try:
        opened = box.open(
            Sealed(str(check.get("key_id")), base64.b64decode(str(check.get("sealed", "")))),
            f"backup:{manifest.get('created_at')}",
        )
    except (SecretError, ValueError) as exc:
        raise BackupError(mismatch) from exc
    if opened != _CANARY or fingerprint != check.get("key_id"):
        raise BackupError(mismatch)


def _alembic_revisions() -> tuple[set[str], set[str]]:
    from persistence.migrate import _script

    known = []
    for kind in ("public", "tenant"):
        _, script = _script(kind)
        known.append({r.revision for r in script.walk_revisions()})
    return known[0], known[1]


async def _version(conn: asyncpg.Connection, schema: str) -> str | None:
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f'"{schema}".alembic_version'
    )
    if not exists:
        return None
    value = await conn.fetchval(f'SELECT version_num FROM "{schema}".alembic_version')
    return str(value) if value is not None else None


@dataclass
class BackupSettings:
    """What backup and restore need from the server settings."""

    database_url: str
    mongodb_url: str | None
    mongodb_database: str
    mongodb_timeout_seconds: float = 5.0


def _mongo(settings: BackupSettings) -> AsyncMongoClient[dict[str, Any]] | None:
    if not settings.mongodb_url:
        return None
    timeout = int(settings.mongodb_timeout_seconds * 1000)
    return AsyncMongoClient(
        settings.mongodb_url, serverSelectionTimeoutMS=max(timeout, 2000), tz_aware=True
    )


async def _mongo_collections(client: AsyncMongoClient[dict[str, Any]], db: str) -> list[str]:
    try:
        names = await client[db].list_collection_names()
    except Exception as exc:
        raise BackupError(f"MongoDB is unavailable: {exc}") from exc
    return sorted(n for n in names if not n.startswith("system."))


async def create_backup(
    settings: BackupSettings, box: KeyBox, out: Path, tenant_slug: str | None = None
) -> list[TenantSummary]:
    """Write the archive `out` with every tenant (or the one with `tenant_slug`)."""
    if box.current_key_id == "none":
        raise BackupError("a backup needs CREWGRAPH_SECRET_KEY (its key check is sealed with it)")
    dsn = _libpq_dsn(settings.database_url)
    created_at = datetime.now(UTC).isoformat()
    files: dict[str, bytes] = {}
    summaries: list[TenantSummary] = []
    conn = await asyncpg.connect(dsn)
    try:
        server_version = str(await conn.fetchval("SHOW server_version"))
        bindir = find_pg_bin(server_version)
        if tenant_slug is None:
            tenants = await conn.fetch(
                "SELECT id::text AS id, slug, schema_name FROM public.tenants ORDER BY created_at"
            )
        else:
            tenants = await conn.fetch(
                "SELECT id::text AS id, slug, schema_name FROM public.tenants WHERE slug = $1",
                tenant_slug,
            )
            if not tenants:
                raise BackupError(f"no tenant with slug {tenant_slug!r}")
        public_rev = await _version(conn, "public")
        revisions: dict[str, str | None] = {}
        for t in tenants:
            summary = TenantSummary(t["id"], t["slug"], t["schema_name"])
            prefix = f"tenants/{t['id']}"
            revisions[t["id"]] = await _version(conn, t["schema_name"])
            files[f"{prefix}/schema.dump"] = await asyncio.to_thread(
                _run,
                [
                    str(bindir / "pg_dump"),
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    f"--schema={t['schema_name']}",
                    "--dbname",
                ],
                dsn,
                f"pg_dump of schema {t['schema_name']}",
            )
            public = await _public_rows(conn, t["id"])
            summary.rows.update({f"public.{k}": len(v) for k, v in public.items()})
            files[f"{prefix}/public.json"] = json.dumps(public, sort_keys=True).encode()
            summaries.append(summary)
    finally:
        await conn.close()

    client = _mongo(settings)
    collections: list[str] = []
    if client is not None:
        try:
            collections = await _mongo_collections(client, settings.mongodb_database)
            db = client[settings.mongodb_database]
            for s in summaries:
                for name in collections:
                    docs = await db[name].find({"tenant_id": s.id}).to_list(None)
                    s.rows[f"mongo.{name}"] = len(docs)
                    files[f"tenants/{s.id}/mongo/{name}.jsonl"] = b"".join(
                        json_util.dumps(d, json_options=json_util.CANONICAL_JSON_OPTIONS).encode()
                        + b"\n"
                        for d in docs
                    )
        finally:
            await client.close()

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": created_at,
        "postgres_server_version": server_version,
        "key_fingerprint": box.current_key_id,
        "key_check": _key_check(box, created_at),
        "alembic": {"public": public_rev},
        "tenants": [
            {
                "id": s.id,
                "slug": s.slug,
                "schema": s.schema,
                "alembic": revisions[s.id],
                "counts": s.rows,
            }
            for s in summaries
        ],
        "mongo_collections": collections,
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name, data in [(MANIFEST, json.dumps(manifest, indent=2).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    os.chmod(partial, 0o600)
    partial.replace(out)
    return summaries


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and members of an archive, after checking every checksum."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members: dict[str, bytes] = {}
            for info in tar:
                if not info.isfile() or not _SAFE_NAME.match(info.name) or ".." in info.name:
                    raise BackupError(f"{path}: unexpected archive member {info.name!r}")
                handle = tar.extractfile(info)
                members[info.name] = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{path}: not a readable backup archive ({exc})") from exc
    try:
        manifest = json.loads(members.pop(MANIFEST))
    except (KeyError, ValueError) as exc:
        raise BackupError(f"{path}: no valid {MANIFEST}: not a Crewgraph backup") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{path}: unsupported backup format {manifest.get('format')!r} "
            f"version {manifest.get('format_version')!r} (this Crewgraph reads {FORMAT_VERSION})"
        )
    expected: dict[str, str] = manifest.get("files") or {}
    if set(expected) != set(members):
        raise BackupError(
            f"{path}: corrupted archive: members differ from the manifest "
            f"(missing {sorted(set(expected) - set(members))}, "
            f"extra {sorted(set(members) - set(expected))})"
        )
    for name, digest in expected.items():
        if _sha256(members[name]) != digest:
            raise BackupError(f"{path}: corrupted archive: checksum mismatch for {name}")
    return manifest, members


async def _exists(conn: asyncpg.Connection, tenant: dict[str, Any]) -> bool:
    if await conn.fetchval("SELECT to_regclass('public.tenants') IS NULL"):
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1", tenant["schema"]
            )
        )
    found = await conn.fetchval(
        "SELECT count(*) FROM public.tenants WHERE id::text = $1 OR slug = $2 OR schema_name = $3",
        tenant["id"],
        tenant["slug"],
        tenant["schema"],
    )
    in_pg = await conn.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname = $1", tenant["schema"]
    )
    return bool(found or in_pg)


async def restore_backup(
    settings: BackupSettings, box: KeyBox, archive: Path, *, replace: bool = False
) -> list[TenantSummary]:
    """Restore every tenant of `archive`; see the module docstring for the checks."""
    from persistence.db import check_schema_name

    manifest, members = read_archive(archive)
    _check_key(box, manifest)
    public_known, tenant_known = _alembic_revisions()
    tenants: list[dict[str, Any]] = list(manifest.get("tenants") or [])
    if manifest["alembic"].get("public") not in public_known | {None}:
        raise BackupError(
            "the archive comes from a newer Crewgraph (unknown public revision "
            f"{manifest['alembic']['public']}): upgrade this installation first"
        )
    for t in tenants:
        check_schema_name(t["schema"])
        if t.get("alembic") not in tenant_known | {None}:
            raise BackupError(
                f"tenant {t['slug']}: the archive comes from a newer Crewgraph (unknown "
                f"revision {t['alembic']}): upgrade this installation first"
            )

    await _migrate(settings.database_url)  # an empty installation gets its public tables
    dsn = _libpq_dsn(settings.database_url)
    conn = await asyncpg.connect(dsn)
    try:
        bindir = find_pg_bin(str(await conn.fetchval("SHOW server_version")))
        existing = [t["slug"] for t in tenants if await _exists(conn, t)]
        if existing and not replace:
            raise BackupError(
                f"tenant(s) {', '.join(existing)} already exist here: restore refused "
                "(use --replace to overwrite them with the archive's data)"
            )
        client = _mongo(settings)
        try:
            if client is not None:
                await _mongo_collections(client, settings.mongodb_database)  # reachable?
            summaries = []
            for t in tenants:
                summaries.append(
                    await _restore_tenant(conn, client, settings, bindir, dsn, t, members)
                )
        finally:
            if client is not None:
                await client.close()
    finally:
        await conn.close()
    await _migrate(settings.database_url)  # archives from older revisions reach head
    return summaries


async def _restore_tenant(
    conn: asyncpg.Connection,
    client: AsyncMongoClient[dict[str, Any]] | None,
    settings: BackupSettings,
    bindir: Path,
    dsn: str,
    t: dict[str, Any],
    members: dict[str, bytes],
) -> TenantSummary:
    summary = TenantSummary(t["id"], t["slug"], t["schema"])
    prefix = f"tenants/{t['id']}"
    public = json.loads(members[f"{prefix}/public.json"])
    # Every row must be this tenant's: an edited archive must not plant rows elsewhere.
    for table, rows in public.items():
        key = _key_column(table)
        if any(str(r.get(key)) != t["id"] for r in rows):
            raise BackupError(f"tenant {t['slug']}: public.{table} holds another tenant's rows")
    mongo_docs: dict[str, list[Any]] = {}
    for name in sorted(n for n in members if n.startswith(f"{prefix}/mongo/")):
        collection = name.rsplit("/", 1)[1].removesuffix(".jsonl")
        docs = [
            json_util.loads(line, json_options=json_util.CANONICAL_JSON_OPTIONS)
            for line in _lines(members[name])
        ]
        if any(d.get("tenant_id") != t["id"] for d in docs):
            raise BackupError(f"tenant {t['slug']}: {collection} holds another tenant's data")
        mongo_docs[collection] = docs
    if mongo_docs and client is None:
        raise BackupError("the archive holds MongoDB documents but MONGODB_URL is not set")
    # Whatever holds the same id, slug or schema goes first (only reached with replace).
    olds = await conn.fetch(
        "SELECT id::text AS id, schema_name FROM public.tenants "
        "WHERE id::text = $1 OR slug = $2 OR schema_name = $3",
        t["id"],
        t["slug"],
        t["schema"],
    )
    async with conn.transaction():
        for old in olds:
            await _delete_public(conn, old["id"])
            await conn.execute(f'DROP SCHEMA IF EXISTS "{old["schema_name"]}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{t["schema"]}" CASCADE')
    if client is not None:
        db = client[settings.mongodb_database]
        for old_id in {t["id"], *(o["id"] for o in olds)}:
            for name in await _mongo_collections(client, settings.mongodb_database):
                await db[name].delete_many({"tenant_id": old_id})

    with tempfile.TemporaryDirectory(prefix="crewgraph-restore-") as tmp:
        dump = Path(tmp) / "schema.dump"
        dump.write_bytes(members[f"{prefix}/schema.dump"])
        await asyncio.to_thread(
            _run,
            [
                str(bindir / "pg_restore"),
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                str(dump),
                "--dbname",
            ],
            dsn,
            f"pg_restore of schema {t['schema']}",
        )
    try:
        async with conn.transaction():
            await _insert_public(conn, public)
    except Exception:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{t["schema"]}" CASCADE')
        raise
    summary.rows.update({f"public.{k}": len(v) for k, v in public.items()})

    if client is not None:
        db = client[settings.mongodb_database]
        for collection, docs in mongo_docs.items():
            if docs:
                await db[collection].insert_many(docs, ordered=False)
            summary.rows[f"mongo.{collection}"] = len(docs)
    return summary


def _lines(data: bytes) -> Iterable[str]:
    return (line for line in data.decode().splitlines() if line.strip())


async def _migrate(database_url: str) -> None:
    from persistence.db import Database
    from persistence.migrate import upgrade_all

    db = Database(database_url)
    try:
        async with db.engine.begin() as c:
            await upgrade_all(c)
    finally:
        await db.dispose()

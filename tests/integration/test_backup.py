"""`crewgraph backup` / `crewgraph restore` against real PostgreSQL and MongoDB: a tenant
with resources, a finished execution, a chat and audit entries is backed up with the
command, restored into a fresh database and a fresh Mongo database, and compared with
the original through the API and the stores; existing tenants, another master key and a
corrupted archive are refused."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from pymongo import AsyncMongoClient

from persistence.backup import BackupError, BackupSettings, restore_backup
from server.crypto import box_from_settings
from tests.conftest import PASSWORD, Team, serving
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL
from tests.support.serve import REPO

if TYPE_CHECKING:
    from tests.support.services import TestServices

REPLY_TIMEOUT = 150.0  # the session's first model call imports LiteLLM


def _env(settings: Any, database_url: str, mongo_db: str, key: str) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.redis_url,
        "MONGODB_URL": settings.mongodb_url,
        "CREWGRAPH_MONGODB_DATABASE": mongo_db,
        "CREWGRAPH_SECRET_KEY": key,
        "CREWGRAPH_JWT_SECRET": settings.jwt_secret,
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _schema_fingerprint(dsn: str, schema: str) -> dict[str, tuple[int, str]]:
    """Per table of `schema`: its row count and an md5 of its rows in a fixed order."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                schema,
            )
        ]
        out = {}
        for t in tables:
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(j, '|' ORDER BY j), '')) AS h "
                f'FROM (SELECT row_to_json(x)::text AS j FROM "{schema}"."{t}" x) s'
            )
            out[t] = (row["n"], row["h"])
        return out
    finally:
        await conn.close()


async def _public_rows(dsn: str, tenant_id: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for t in ("tenants", "users", "api_keys", "refresh_tokens"):
            key = "id" if t == "tenants" else "tenant_id"
            rows = await conn.fetch(
                f"SELECT row_to_json(x)::text AS j FROM public.{t} x WHERE {key}::text = $1",
                tenant_id,
            )
            out[t] = sorted(r["j"] for r in rows)
        return out
    finally:
        await conn.close()


async def _mongo_docs(url: str, db: str, tenant_id: str) -> dict[str, list[Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    try:
        out = {}
        for name in ("chat_messages", "audit_entries"):
            docs = await client[db][name].find({"tenant_id": tenant_id}).to_list(None)
            out[name] = sorted(docs, key=lambda d: str(d["_id"]))
        return out
    finally:
        await client.close()


async def _through_api(gql: GQL, token: str, ids: dict[str, str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name in ("Tools", "Agents", "Crews", "Flows", "LlmProviders", "Users", "ApiKeys"):
        seen[name] = await gql.ok(name, {}, token=token)
    seen["flow"] = await gql.ok("Flow", {"id": ids["flow"]}, token=token)
    seen["execution"] = await gql.ok("Execution", {"id": ids["execution"]}, token=token)
    seen["events"] = await gql.ok(
        "ExecutionEventLog", {"id": ids["execution"], "first": 100}, token=token
    )
    seen["audit"] = await gql.ok("AuditLog", {"first": 100}, token=token)
    if ids.get("chat"):
        seen["chat"] = await gql.ok("ChatHistory", {"id": ids["chat"], "last": 50}, token=token)
    return seen


async def _chat(gql: GQL, team: Team) -> str | None:
    try:
        body = await gql.ok(
            "CreateLlmProviderRuntime",
            {
                "input": {
                    "name": f"llm-{secrets.token_hex(4)}",
                    "provider": "openai",
                    "model": "scripted",
                    "baseUrl": "crewgraph:local",
                }
            },
            token=team.token,
        )
        session = await gql.ok(
            "CreateChatSession",
            {"input": {"llmProviderId": body["createLlmProvider"]["id"]}},
            token=team.token,
        )
    except AssertionError as exc:
        print(f"chat part skipped: chat is not available here ({exc})")
        return None
    session_id: str = session["createChatSession"]["id"]
    await gql.ok("SendChatMessage", {"sessionId": session_id, "content": "hi"}, token=team.token)
    deadline = asyncio.get_running_loop().time() + REPLY_TIMEOUT
    while True:  # the reply finished: a backup taken now is what the API shows
        history = await gql.ok("ChatHistory", {"id": session_id, "last": 10}, token=team.token)
        text = json.dumps(history)
        if "STREAMING" not in text and "PENDING" not in text and text.count('"role"') >= 2:
            return session_id
        assert asyncio.get_running_loop().time() < deadline, history
        await asyncio.sleep(0.2)


@pytest.fixture
async def fresh(services: TestServices) -> AsyncIterator[tuple[str, str]]:
    """An empty database and Mongo database name for the restore."""
    name = f"{services.database}_restore_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(services.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = services.database_url.rsplit("/", 1)[0] + "/" + name
    yield url, name
    admin = await asyncpg.connect(services.admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(services.mongo_url)
    await client.drop_database(name)
    await client.close()


async def test_backup_and_restore_into_an_empty_installation(
    gql: GQL,
    team: Team,
    settings: Any,
    container: Any,
    services: TestServices,
    fresh: tuple[str, str],
    tmp_path: Path,
) -> None:
    # A tenant with resources, an API key, a finished execution, a chat and audit entries.
    world = await b.world(gql, team.token)
    await gql.ok("CreateApiKey", {"name": "ci", "role": "MEMBER"}, token=team.token)
    flow = await f.create_flow(gql, team.token, f.branching())
    run = await f.execute(gql, team.token, flow["id"], {"score": 7})
    assert (await f.wait_status(gql, team.token, run["id"]))["status"] == "COMPLETED"
    chat = await _chat(gql, team)
    await container.audit_log.flush()
    ids = {"flow": world["flow"]["id"], "execution": run["id"], "chat": chat or ""}
    before_api = await _through_api(gql, team.token, ids)
    assert before_api["audit"]["auditLog"]["edges"], "no audit entries to back up"

    schema = (await _public_rows(services.database_dsn, team.tenant_id))["tenants"][0]
    schema_name = json.loads(schema)["schema_name"]
    before_pg = await _schema_fingerprint(services.database_dsn, schema_name)
    before_public = await _public_rows(services.database_dsn, team.tenant_id)
    before_mongo = await _mongo_docs(
        settings.mongodb_url, settings.mongodb_database, team.tenant_id
    )
    assert before_pg["executions"][0] == 1 and before_pg["execution_events"][0] > 0
    assert before_mongo["audit_entries"] and before_public["api_keys"]
    if chat:
        assert len(before_mongo["chat_messages"]) >= 2

    archive = tmp_path / "team.tar.gz"
    source = _env(settings, settings.database_url, settings.mongodb_database, settings.secret_key)
    done = _cli(source, "backup", "--tenant", team.slug, str(archive))
    assert done.returncode == 0, done.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert [t["slug"] for t in manifest["tenants"]] == [team.slug]
    assert settings.secret_key not in json.dumps(manifest)
    assert manifest["alembic"]["public"] and manifest["tenants"][0]["alembic"]
    assert all(len(d) == 64 for d in manifest["files"].values())

    fresh_url, fresh_mongo = fresh
    target = _env(settings, fresh_url, fresh_mongo, settings.secret_key)

    box = box_from_settings(settings.secret_key, None, None)
    direct = BackupSettings(fresh_url, settings.mongodb_url, fresh_mongo)

    # Another master key: refused, nothing written.
    from server.crypto import new_key_text

    wrong = _cli({**target, "CREWGRAPH_SECRET_KEY": new_key_text()}, "restore", str(archive))
    assert wrong.returncode == 1 and "master key" in wrong.stderr, wrong.stderr

    # A corrupted member (same manifest): refused.
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(bad, "w:gz") as dst:
        for info in src:
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name.endswith("public.json"):
                data = data.replace(b'"', b"'", 1)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    with pytest.raises(BackupError, match="checksum mismatch"):
        await restore_backup(direct, box, bad)

    restored = _cli(target, "restore", str(archive))
    assert restored.returncode == 0, restored.stderr + restored.stdout

    fresh_dsn = fresh_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    assert await _schema_fingerprint(fresh_dsn, schema_name) == before_pg
    assert await _public_rows(fresh_dsn, team.tenant_id) == before_public
    assert await _mongo_docs(settings.mongodb_url, fresh_mongo, team.tenant_id) == before_mongo

    # Restoring again: the tenant exists now.
    with pytest.raises(BackupError, match=r"already exist.*--replace"):
        await restore_backup(direct, box, archive)
    replaced = _cli(target, "restore", str(archive), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert await _schema_fingerprint(fresh_dsn, schema_name) == before_pg
    assert await _mongo_docs(settings.mongodb_url, fresh_mongo, team.tenant_id) == before_mongo

    # The same tenant through the API of a server on the restored stores.
    from server.app import create_app
    from server.bootstrap import build_container

    other = build_container(
        settings.model_copy(
            update={
                "database_url": fresh_url,
                "mongodb_database": fresh_mongo,
                "redis_prefix": f"cgrestore{secrets.token_hex(3)}",
            }
        ),
        rate_limits={},
    )
    try:
        async with serving(create_app(other)) as url, aclosing(GQL(url)) as client:
            login = await client.ok(
                "Login",
                {"input": {"email": team.email, "password": PASSWORD, "tenantSlug": team.slug}},
            )
            token = login["login"]["accessToken"]
            await other.audit_log.flush()
            after_api = await _through_api(client, token, ids)
    finally:
        await other.aclose()
    # The login just made is audited on the restored side: every earlier entry is there.
    after_audit = {e["node"]["id"]: e["node"] for e in after_api["audit"]["auditLog"]["edges"]}
    for entry in before_api["audit"]["auditLog"]["edges"]:
        assert after_audit.get(entry["node"]["id"]) == entry["node"]
    for key in before_api:
        if key != "audit":
            assert after_api[key] == before_api[key], key

"""Provider API keys are stored encrypted; `crewgraph rotate-key` re-encrypts them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import sqlalchemy as sa

from server.crypto import AesGcmBox, key_id, new_key_text, parse_key
from tests.conftest import Team
from tests.support import builders as b
from tests.support.client import GQL


async def _stored(container: Any, team: Team, provider_id: str) -> tuple[str, bytes]:
    async with container.db.connect() as conn:
        schema = (
            await conn.execute(
                sa.text("SELECT schema_name FROM public.tenants WHERE id = :i"),
                {"i": team.tenant_id},
            )
        ).scalar_one()
        row = (
            await conn.execute(
                sa.text(
                    f'SELECT api_key_key_id, api_key_ciphertext FROM "{schema}".llm_providers WHERE id = :i'
                ),
                {"i": provider_id},
            )
        ).one()
    return row[0], bytes(row[1])


def _rotate(settings: Any, current: str, previous: str) -> str:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CREWGRAPH_SECRET_KEY": current,
        "CREWGRAPH_PREVIOUS_SECRET_KEYS": previous,
    }
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "rotate-key"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


async def test_keys_are_encrypted_and_rotate(
    gql: GQL, team: Team, container: Any, settings: Any
) -> None:
    provider = await b.provider(gql, team.token, apiKey="sk-rotate-me-123")
    kid, blob = await _stored(container, team, provider["id"])
    old = settings.secret_key
    assert kid == key_id(parse_key(old))
    assert b"sk-rotate-me-123" not in blob

    new = new_key_text()
    output = _rotate(settings, new, old)
    assert "re-encrypted" in output
    kid2, blob2 = await _stored(container, team, provider["id"])
    assert kid2 == key_id(parse_key(new)) and blob2 != blob
    context = f"llm_provider:{team.tenant_id}:{provider['id']}"
    from domain.secrets import Sealed

    assert AesGcmBox(parse_key(new)).open(Sealed(kid2, blob2), context) == "sk-rotate-me-123"

    # And back, so the running server's key reads everything again.
    _rotate(settings, old, new)
    kid3, _ = await _stored(container, team, provider["id"])
    assert kid3 == kid

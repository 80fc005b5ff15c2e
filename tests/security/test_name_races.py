"""Creates racing for one name: the database's unique index decides, and the loser gets
CONFLICT, never an internal error."""

from __future__ import annotations

import asyncio
import uuid

from tests.conftest import Team
from tests.support.client import GQL, error_code


async def test_concurrent_creates_of_one_name_give_one_success_and_conflicts(
    gql: GQL, team: Team
) -> None:
    name = f"racer-{uuid.uuid4().hex[:8]}"
    agent = {"name": name, "role": "Researcher", "goal": "Find facts", "backstory": "Curious"}
    clients = [GQL(gql.base_url) for _ in range(8)]
    try:
        for _ in range(3):  # warm connections, so the creates start together
            await asyncio.gather(*(c.op("Me", {}, token=team.token) for c in clients))
        bodies = await asyncio.gather(
            *(c.op("CreateAgent", {"input": agent}, token=team.token) for c in clients)
        )
    finally:
        for c in clients:
            await c.aclose()
    created = [b for b in bodies if not b.get("errors")]
    codes = {error_code(b) for b in bodies if b.get("errors")}
    assert len(created) == 1, bodies
    assert codes <= {"CONFLICT"}, bodies

"""Chat replies on `crewgraph worker` processes (CREWGRAPH_WORKER_MODE=arq): the reply runs
in another process, a cancel reaches it over Redis within a second, and a SIGKILLed
worker's reply fails once its claim expires instead of blocking the session."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_chat import _check_reply, _history, _provider, _send, _session, tokens
from tests.conftest import register, serving
from tests.support.client import GQL, error_code

ROOT = Path(__file__).resolve().parents[2]
LEASE = 2.0


@pytest.fixture(scope="module")
def chat_arq_settings(settings: Any) -> Any:
    return settings.model_copy(
        update={
            "worker_mode": "arq",
            "redis_prefix": f"cgchat{secrets.token_hex(4)}",
            "chat_reply_lease_seconds": LEASE,
        }
    )


@pytest.fixture(scope="module")
async def chat_api(chat_arq_settings: Any) -> AsyncIterator[str]:
    from server.app import create_app
    from server.bootstrap import build_container

    container = build_container(chat_arq_settings, rate_limits={})
    assert container.chat_runner is None  # this process only dispatches replies
    async with serving(create_app(container)) as url:
        container.settings.self_url = url
        yield url


@pytest.fixture
async def api(chat_api: str) -> AsyncIterator[GQL]:
    async with aclosing(GQL(chat_api)) as client:
        yield client


class Worker:
    def __init__(self, settings: Any, api_url: str, data: Path) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "MONGODB_URL": settings.mongodb_url,
            "CREWGRAPH_MONGODB_DATABASE": settings.mongodb_database,
            "CREWGRAPH_REDIS_PREFIX": settings.redis_prefix,
            "CREWGRAPH_SECRET_KEY": settings.secret_key,
            "CREWGRAPH_JWT_SECRET": settings.jwt_secret,
            "CREWGRAPH_SELF_URL": api_url,  # where `crewgraph:local` (the scripted model) is
            "CREWGRAPH_CHAT_REPLY_LEASE_SECONDS": str(LEASE),
            "CREWGRAPH_LOG_LEVEL": "WARNING",
            "CREWGRAPH_DATA_DIR": str(data),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def worker(chat_arq_settings: Any, chat_api: str, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(chat_arq_settings, chat_api, tmp_path / "data")
    yield w
    w.stop()


async def _worker_ready(settings: Any, timeout: float = 120.0) -> None:
    """Until the worker polls its queue (arq's health-check key): a reply queued before
    then waits longer than its short claim window and is failed as abandoned."""
    from arq.constants import health_check_key_suffix
    from redis.asyncio import Redis

    from server.workers import queue_name

    key = queue_name(settings.redis_prefix, settings.worker_queue) + health_check_key_suffix
    redis = Redis.from_url(settings.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while not await redis.exists(key):
            assert time.monotonic() < deadline, "the worker did not start polling its queue"
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()


async def test_replies_run_on_a_worker_process_which_cancel_and_death_reach(
    api: GQL, worker: Worker, chat_arq_settings: Any
) -> None:
    worker.start()  # its start-up (seconds of imports) overlaps the set-up below
    team = await register(api)
    fast = await _session(api, team, llmProviderId=await _provider(api, team))
    slow = await _session(api, team, llmProviderId=await _provider(api, team, "scripted-slow"))
    await _worker_ready(chat_arq_settings)

    async with tokens(api, team.token, fast["id"]) as stream:
        await _send(api, team.token, fast["id"], "SAY: from a worker")
        assert _check_reply(await stream.reply(150)) == "from a worker"

    async with tokens(api, team.token, slow["id"]) as stream:
        # Cancel: the API process signals the worker process over Redis.
        await _send(api, team.token, slow["id"], "Talk slowly")
        for _ in range(3):
            await stream.next(60)
        started = time.monotonic()
        body = await api.ok("CancelChatReply", {"sessionId": slow["id"]}, token=team.token)
        cancelled = body["cancelChatReply"]
        assert time.monotonic() - started < 1.5
        assert cancelled["status"] == "CANCELLED"
        await stream.reply(10)
        first = list(stream.seen)
        assert cancelled["content"] == _check_reply(first) and len(first) < 51

        # Death: the worker is killed mid-reply; the session is free once its claim expires.
        await _send(api, team.token, slow["id"], "Talk slowly again")
        for _ in range(2):
            await stream.next(60)
        worker.kill()
        body = await api.op(
            "SendChatMessage", {"sessionId": slow["id"], "content": "hi"}, token=team.token
        )
        assert error_code(body) == "CONFLICT", body
        await asyncio.sleep(LEASE + 0.5)
        await _send(api, team.token, slow["id"], "Still there?")
        died = await stream.reply(10)
        assert died[-1]["error"] and "interrupted" in died[-1]["error"]
        # No worker runs now: cancelling the new reply ends it at once.
        body = await api.ok("CancelChatReply", {"sessionId": slow["id"]}, token=team.token)
        assert body["cancelChatReply"]["status"] == "CANCELLED"

    history = await _history(api, team, slow["id"])
    assert [e["node"]["status"] for e in history["messages"]["edges"]] == [
        "COMPLETED",
        "CANCELLED",
        "COMPLETED",
        "FAILED",
        "COMPLETED",
        "CANCELLED",
    ]

"""Login attempts are rate limited per client and email (limits + Redis)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from tests.conftest import serving
from tests.support.client import GQL, error_code


async def test_login_is_rate_limited(settings: Any) -> None:
    from server.app import create_app
    from server.bootstrap import build_container

    tight = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "rl"})
    app = create_app(build_container(tight, rate_limits={"login": "3/minute"}))
    async with serving(app) as url, aclosing(GQL(url)) as client:
        attempt = {"input": {"email": "nobody@example.com", "password": "wrong-password"}}
        codes = [error_code(await client.op("Login", attempt)) for _ in range(4)]
        assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]
        other = {"input": {"email": "someone-else@example.com", "password": "wrong-password"}}
        assert error_code(await client.op("Login", other)) == "UNAUTHENTICATED"

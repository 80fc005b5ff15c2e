"""Rate limits kept in Redis (moving windows via the `limits` package), so every API
process of a deployment counts the same attempts."""

from __future__ import annotations

from collections.abc import Mapping

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from domain.errors import RateLimited


class RedisRateLimiter:
    """Implements the domain `RateLimiter` port. `rules` maps an action name ("login")
    to a `limits` rule ("20/minute"); actions without a rule are never limited."""

    def __init__(self, redis_url: str, prefix: str, rules: Mapping[str, str]) -> None:
        uri = "async+" + redis_url.replace("unix://", "redis+unix://", 1)
        self._storage = RedisStorage(uri, implementation="redispy", key_prefix=f"{prefix}:rl")
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._rules: dict[str, RateLimitItem] = {k: parse(v) for k, v in rules.items()}

    async def hit(self, name: str, *identifiers: str) -> None:
        rule = self._rules.get(name)
        if rule is not None and not await self._limiter.hit(rule, name, *identifiers):
            raise RateLimited(f"too many {name} attempts; limit is {rule}; try again later")

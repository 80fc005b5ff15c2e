"""Rate limits kept in Redis (moving windows via the `limits` package), so every API
process of a deployment counts the same attempts.

The rules come from one operator setting, `CREWGRAPH_RATE_LIMITS`
(`name=rule[;rule...],...`, e.g. `login=20/minute,query=5/second;1000/hour,subscribe=off`),
merged over the defaults; `parse_rules` checks it at start-up and names a bad entry."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from domain.errors import RateLimited

OFF = ("off", "none", "unlimited")


def parse_rules(text: str, defaults: Mapping[str, str]) -> dict[str, str]:
    """`defaults` with the entries of `text` applied; raises ValueError naming the first bad
    entry. `text` may be `off` (every limit off), an entry's rule `off` turns that one off.
    Only the names of `defaults` are known (a typo must not silently limit nothing)."""
    rules = dict(defaults)
    text = text.strip()
    if not text:
        return rules
    if text.lower() in OFF:
        return {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, rule = (part.strip() for part in entry.partition("="))
        if not sep or not name or not rule:
            raise ValueError(f"rate limit entry {entry!r} is not of the form name=rule")
        if name not in defaults:
            known = ", ".join(sorted(defaults))
            raise ValueError(f"rate limit entry {entry!r}: unknown name {name!r} (known: {known})")
        if rule.lower() in OFF:
            rules.pop(name, None)
            continue
        try:
            items = parse_many(rule)
        except ValueError:
            items = []
        if not items:
            raise ValueError(
                f"rate limit entry {entry!r}: {rule!r} is not a rule like 20/minute, "
                "100 per hour or 5/second;1000/day"
            )
        if any(item.amount < 1 for item in items):
            raise ValueError(f"rate limit entry {entry!r}: amounts must be at least 1")
        rules[name] = rule
    return rules


class RedisRateLimiter:
    """Implements the domain `RateLimiter` port. `rules` maps an action name ("login")
    to one or more `limits` rules ("20/minute", "5/second;1000/hour"); actions without a
    rule are never limited. Over a limit: RATE_LIMITED with `extensions.retryAfter`, the
    whole seconds until the window lets one more in."""

    def __init__(self, redis_url: str, prefix: str, rules: Mapping[str, str]) -> None:
        uri = "async+" + redis_url.replace("unix://", "redis+unix://", 1)
        self._storage = RedisStorage(uri, implementation="redispy", key_prefix=f"{prefix}:rl")
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._rules: dict[str, list[RateLimitItem]] = {k: parse_many(v) for k, v in rules.items()}

    def limited(self, name: str) -> bool:
        """Whether `name` has a rule (callers skip work for actions never limited)."""
        return name in self._rules

    async def hit(self, name: str, *identifiers: str, cost: int = 1) -> None:
        for rule in self._rules.get(name, ()):
            if not await self._limiter.hit(rule, name, *identifiers, cost=cost):
                stats = await self._limiter.get_window_stats(rule, name, *identifiers)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"too many {name.replace('_', ' ')} requests; the limit is {rule}; "
                    f"try again in {retry} s",
                    extensions={"retryAfter": retry, "limit": name},
                )

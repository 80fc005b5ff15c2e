"""Password hashing, JWTs and opaque secrets: the adapters behind domain.ports."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from domain.errors import Unauthenticated
from domain.ports import AccessClaims

_ALGORITHM = "HS256"


class Argon2Hasher:
    """argon2 takes ~100 ms of CPU per call: it runs on threads of its own (argon2-cffi
    releases the GIL), never on the event loop, and on a small dedicated pool so a flood
    of logins queues there instead of starving `asyncio.to_thread` users."""

    def __init__(self, threads: int = 2) -> None:
        # argon2id with the library's RFC 9106 low-memory profile.
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="argon2")
        return self._pool

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        # Verifying against a dummy hash keeps timing flat for unknown emails.
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


class JwtCodec:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: str, tenant_id: str, session_id: str | None = None) -> str:
        now = datetime.now(UTC)
        claims: dict[str, object] = {
            "sub": user_id,
            "tid": tenant_id,
            "iat": now,
            "exp": now + timedelta(seconds=self.ttl_seconds),
            "jti": uuid.uuid4().hex,
        }
        if session_id is not None:
            claims["sid"] = session_id  # logout denies the session's tokens (domain/auth.py)
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={"require": ["exp", "iat", "sub", "tid", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired")
        except jwt.PyJWTError:
            raise Unauthenticated("invalid access token")
        try:  # ids the database can look up: a malformed one is a bad token, not a 500
            uuid.UUID(str(claims["sub"]))
            uuid.UUID(str(claims["tid"]))
        except ValueError:
            raise Unauthenticated("invalid access token") from None
        sid = claims.get("sid")
        return AccessClaims(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tid"]),
            token_id=str(claims["jti"]),
            session_id=sid if isinstance(sid, str) and sid else None,
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )

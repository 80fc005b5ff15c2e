"""Password hashing, JWTs and opaque secrets: the adapters behind domain.ports."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from domain.errors import Unauthenticated
from domain.ports import AccessClaims

_ALGORITHM = "HS256"


class Argon2Hasher:
    def __init__(self) -> None:
        # argon2id with the library's RFC 9106 low-memory profile.
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
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
        sid = claims.get("sid")
        return AccessClaims(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tid"]),
            token_id=str(claims["jti"]),
            session_id=sid if isinstance(sid, str) and sid else None,
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )

"""Identity use cases: registration, sessions, users and API keys of a tenant."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from domain import audit
from domain.audit import NO_AUDIT, AuditRecorder
from domain.errors import BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated
from domain.identity import ApiKey, Principal, RefreshToken, Tenant, User
from domain.ports import (
    AccessTokens,
    CredentialRevocations,
    Page,
    PasswordHasher,
    Revocation,
    UnitOfWork,
    UnitOfWorkFactory,
)
from domain.rbac import Action, Role
from domain.validation import Checker

_REFRESH_PREFIX = "cgr"
_API_KEY_PREFIX = "cgk"
_MAX_LOGIN_CANDIDATES = 5

# Fills a new tenant's schema inside the registration transaction (e.g. the laptop
# profile's `Local (scripted)` LLM provider); wired in server/bootstrap.py.
TenantSeed = Callable[[UnitOfWork, Tenant], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    """Minted secrets carry 256 bits of entropy, so SHA-256 suffices to store them."""
    return hashlib.sha256(secret.encode()).hexdigest()


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "team"


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Session:
    access_token: str
    refresh_token: str
    expires_in: int
    user: User


@dataclass(frozen=True, slots=True)
class IdentityService:
    uow: UnitOfWorkFactory
    hasher: PasswordHasher
    tokens: AccessTokens
    refresh_ttl: int
    clock: Callable[[], datetime] = _now
    seed_tenant: TenantSeed | None = None
    # Revocations reach every API process (open WebSockets end) and logged-out sessions
    # are denied until their last access token expires; None only in narrow tests.
    revocations: CredentialRevocations | None = None
    # Seconds in which a just-rotated refresh token may come back (two tabs refreshing at
    # once) and get a fresh pair of the same family instead of revoking it as stolen.
    refresh_reuse_seconds: float = 0.0
    # Sign-ins, token reuse, user and API key changes go to the tenant's audit log.
    audit: AuditRecorder = NO_AUDIT

    # -- sessions -----------------------------------------------------------

    async def register(self, tenant_name: str, email: str, password: str) -> Session:
        check = Checker()
        name = check.text("tenantName", tenant_name, max_len=100) or ""
        email = check.email("email", email)
        check.password("password", password)
        check.raise_if_any()
        password_hash = await self.hasher.hash(password)
        now = self.clock()
        async with self.uow() as uow:
            slug = slugify(name)
            if await uow.tenants.slug_taken(slug):
                slug = f"{slug[:33]}-{secrets.token_hex(3)}"
            tenant_id = str(uuid.uuid4())
            tenant = Tenant(tenant_id, name, slug, f"tenant_{tenant_id[:8]}{tenant_id[9:13]}", now)
            await uow.tenants.add(tenant)
            await uow.tenants.create_schema(tenant)
            if self.seed_tenant is not None:
                await self.seed_tenant(uow, tenant)
            user = User(str(uuid.uuid4()), tenant_id, email, password_hash, Role.ADMIN, True, now)
            await uow.users.add(user)
            session = await self._open_session(uow, user, family_id=None)
            await uow.commit()
        self.audit.record(tenant_id, audit.TENANT_REGISTERED, actor=email, target=tenant.slug)
        return session

    async def login(self, email: str, password: str, tenant_slug: str | None) -> Session:
        email = email.strip().lower()
        async with self.uow() as uow:
            tenant_id = None
            if tenant_slug:
                tenant = await uow.tenants.by_slug(tenant_slug.strip().lower())
                tenant_id = tenant.id if tenant else None
                candidates = await uow.users.by_email(email, tenant_id) if tenant else []
            else:
                candidates = await uow.users.by_email(email)
            # A deactivated account answers as a wrong password does (verified all the
            # same, so the timing matches too): a correct password must not tell more.
            verified = [
                u
                for u in candidates[:_MAX_LOGIN_CANDIDATES]
                if await self.hasher.verify(u.password_hash, password)
            ]
            matches = [u for u in verified if u.active]
            if not candidates:
                await self.hasher.verify(None, password)  # same cost as a wrong password
            if len(matches) > 1:
                raise BadUserInput(
                    "this email belongs to several teams: give tenantSlug",
                    {"tenantSlug": "is required for this email"},
                )
            if not matches:
                reason = (
                    "account deactivated"
                    if verified
                    else ("wrong password" if candidates else "unknown email")
                )
                tenants = [tenant_id] if tenant_id else [u.tenant_id for u in candidates]
                for failed_in in dict.fromkeys(tenants[:_MAX_LOGIN_CANDIDATES]):
                    self.audit.record(
                        failed_in, audit.LOGIN_FAILED, actor=email, data={"reason": reason}
                    )
                raise Unauthenticated("invalid email or password")
            user = matches[0]
            # Told only after the password matched: it says nothing to a guesser.
            await self._require_active_tenant(uow, user.tenant_id)
            session = await self._open_session(uow, user, family_id=None)
            await uow.commit()
        self.audit.record(user.tenant_id, audit.LOGIN, actor=user.email, target=user.id)
        return session

    async def refresh(self, token: str) -> Session:
        now = self.clock()
        async with self.uow() as uow:
            stored = await uow.refresh_tokens.by_hash_for_update(digest(token))
            if stored is None:
                raise Unauthenticated("invalid refresh token")
            # The row lock serialises concurrent refreshes of one token: the second sees
            # the first one's `used_at` and, within the reuse window, gets its own pair.
            in_window = (
                stored.used_at is not None
                and stored.revoked_at is None
                and now - stored.used_at <= timedelta(seconds=self.refresh_reuse_seconds)
            )
            if (stored.used_at is not None or stored.revoked_at is not None) and not in_window:
                # A rotated token came back: somebody holds a copy. Kill the family.
                await uow.refresh_tokens.revoke_family(stored.family_id, now)
                owner = await uow.users.get(stored.tenant_id, stored.user_id)
                await uow.commit()
                self.audit.record(
                    stored.tenant_id,
                    audit.REFRESH_TOKEN_REUSED,
                    actor=owner.email if owner else None,
                    target=stored.user_id,
                    data={"session": stored.family_id},
                )
                await self._end_session(stored, "session revoked: refresh token reuse")
                raise Unauthenticated("refresh token was already used; session revoked")
            if stored.expires_at <= now:
                raise Unauthenticated("refresh token expired")
            user = await uow.users.get(stored.tenant_id, stored.user_id)
            if user is None or not user.active:
                raise Unauthenticated("this account is deactivated")
            # The token stays unused: it works again once the tenant is activated.
            await self._require_active_tenant(uow, stored.tenant_id)
            if stored.used_at is None:
                await uow.refresh_tokens.mark_used(stored.id, now)
            session = await self._open_session(uow, user, family_id=stored.family_id)
            await uow.commit()
        return session

    async def logout(self, token: str) -> bool:
        async with self.uow() as uow:
            stored = await uow.refresh_tokens.by_hash_for_update(digest(token))
            if stored is None:
                raise Unauthenticated("invalid refresh token")
            await uow.refresh_tokens.revoke_family(stored.family_id, self.clock())
            await uow.commit()
        await self._end_session(stored, "logged out")
        return True

    async def _end_session(self, stored: RefreshToken, reason: str) -> None:
        """Every access token of the session stops working now, not at its expiry."""
        if self.revocations is None:
            return
        revocation = Revocation(stored.tenant_id, session_id=stored.family_id, reason=reason)
        for key in revocation.keys():
            # An access token of the session lives at most `ttl_seconds` from now.
            await self.revocations.deny(key, self.tokens.ttl_seconds + 1)
        await self.revocations.announce(revocation)

    @staticmethod
    async def _require_active_tenant(uow: UnitOfWork, tenant_id: str) -> None:
        tenant = await uow.tenants.get(tenant_id)
        if tenant is None:
            raise Unauthenticated("this account no longer exists")
        tenant.require_active()

    async def _announce(self, revocation: Revocation) -> None:
        if self.revocations is not None:
            await self.revocations.announce(revocation)

    async def _open_session(self, uow: UnitOfWork, user: User, family_id: str | None) -> Session:
        secret = new_secret(_REFRESH_PREFIX)
        token = RefreshToken(
            id=str(uuid.uuid4()),
            tenant_id=user.tenant_id,
            user_id=user.id,
            family_id=family_id or str(uuid.uuid4()),
            token_hash=digest(secret),
            expires_at=self.clock() + timedelta(seconds=self.refresh_ttl),
            used_at=None,
            revoked_at=None,
        )
        await uow.refresh_tokens.add(token)
        access = self.tokens.issue(user.id, user.tenant_id, session_id=token.family_id)
        return Session(access, secret, self.tokens.ttl_seconds, user)

    # -- authentication -----------------------------------------------------

    async def authenticate_bearer(self, token: str) -> Principal:
        claims = self.tokens.decode(token)
        if claims.session_id and self.revocations is not None:
            if await self.revocations.denied(
                Revocation(claims.tenant_id, session_id=claims.session_id).keys()
            ):
                raise Unauthenticated("this session has ended; log in again")
        async with self.uow() as uow:
            user = await uow.users.get(claims.tenant_id, claims.user_id)
            tenant = await uow.tenants.get(claims.tenant_id) if user else None
        if user is None or tenant is None or not user.active:
            raise Unauthenticated("this account is deactivated or no longer exists")
        tenant.require_active()
        return Principal(
            tenant.id,
            tenant.schema_name,
            user.role,
            user_id=user.id,
            session_id=claims.session_id,
            expires_at=claims.expires_at,
            actor_name=user.email,
        )

    async def authenticate_api_key(self, secret: str) -> Principal:
        async with self.uow() as uow:
            key = await uow.api_keys.by_hash(digest(secret))
            tenant = await uow.tenants.get(key.tenant_id) if key else None
        if key is None or key.revoked_at is not None or tenant is None:
            raise Unauthenticated("invalid API key")
        tenant.require_active()
        return Principal(
            tenant.id, tenant.schema_name, key.role, api_key_id=key.id, actor_name=key.name
        )

    # -- reads ----------------------------------------------------------------

    async def me(self, principal: Principal) -> User:
        if principal.user_id is None:
            raise Forbidden("an API key has no user; `me` needs a user token")
        async with self.uow() as uow:
            user = await uow.users.get(principal.tenant_id, principal.user_id)
        if user is None:
            raise Unauthenticated("this account no longer exists")
        return user

    async def tenant(self, tenant_id: str) -> Tenant:
        async with self.uow() as uow:
            tenant = await uow.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound("tenant", tenant_id)
        return tenant

    async def users(self, principal: Principal, first: int, after: str | None) -> Page[User]:
        principal.require(Action.READ)
        async with self.uow() as uow:
            return await uow.users.page(principal.tenant_id, first, after)

    async def users_by_ids(self, tenant_id: str, ids: list[str]) -> list[User | None]:
        async with self.uow() as uow:
            return [await uow.users.get(tenant_id, i) if is_uuid(i) else None for i in ids]

    # -- user management (admin) ---------------------------------------------

    async def create_user(
        self, principal: Principal, email: str, password: str, role: Role
    ) -> User:
        principal.require(Action.MANAGE_USERS)
        check = Checker()
        email = check.email("email", email)
        check.password("password", password)
        check.raise_if_any()
        user = User(
            str(uuid.uuid4()),
            principal.tenant_id,
            email,
            await self.hasher.hash(password),
            role,
            True,
            self.clock(),
        )
        async with self.uow() as uow:
            if await uow.users.by_email(email, principal.tenant_id):
                raise Conflict(
                    "a user with this email already exists in this team",
                    extensions={"fields": {"email": "is already taken"}},
                )
            await uow.users.add(user)
            await uow.commit()
        self.audit.record(
            principal.tenant_id,
            audit.USER_CREATED,
            principal=principal,
            target=user.id,
            data={"email": user.email, "role": user.role.value},
        )
        return user

    async def update_user_role(self, principal: Principal, user_id: str, role: Role) -> User:
        principal.require(Action.MANAGE_USERS)
        async with self.uow() as uow:
            user = await self._user(uow, principal, user_id)
            if user.role is Role.ADMIN and role is not Role.ADMIN:
                await self._keep_an_admin(uow, principal)
            changed = user.role is not role
            previous = user.role
            user.role = role
            await uow.users.update(user)
            await uow.commit()
        if changed:
            self.audit.record(
                principal.tenant_id,
                audit.USER_ROLE_CHANGED,
                principal=principal,
                target=user.id,
                data={"email": user.email, "from": previous.value, "to": role.value},
            )
        if changed:  # open connections of the user end; they reconnect with the new role
            await self._announce(Revocation(user.tenant_id, user_id=user.id, reason="role changed"))
        return user

    async def deactivate_user(self, principal: Principal, user_id: str) -> User:
        principal.require(Action.MANAGE_USERS)
        async with self.uow() as uow:
            user = await self._user(uow, principal, user_id)
            if user.active and user.role is Role.ADMIN:
                await self._keep_an_admin(uow, principal)
            user.active = False
            await uow.users.update(user)
            await uow.refresh_tokens.revoke_user(user.id, self.clock())
            await uow.commit()
        self.audit.record(
            principal.tenant_id,
            audit.USER_DEACTIVATED,
            principal=principal,
            target=user.id,
            data={"email": user.email},
        )
        await self._announce(Revocation(user.tenant_id, user_id=user.id, reason="user deactivated"))
        return user

    async def _user(self, uow: UnitOfWork, principal: Principal, user_id: str) -> User:
        user = await uow.users.get(principal.tenant_id, user_id) if is_uuid(user_id) else None
        if user is None:
            raise NotFound("user", user_id)
        return user

    async def _keep_an_admin(self, uow: UnitOfWork, principal: Principal) -> None:
        if await uow.users.count_admins(principal.tenant_id) <= 1:
            raise Conflict("a team needs at least one active admin")

    # -- API keys (admin) ------------------------------------------------------

    async def create_api_key(
        self, principal: Principal, name: str, role: Role
    ) -> tuple[ApiKey, str]:
        principal.require(Action.MANAGE_API_KEYS)
        check = Checker()
        name = check.text("name", name) or ""
        check.raise_if_any()
        secret = new_secret(_API_KEY_PREFIX)
        key = ApiKey(
            str(uuid.uuid4()), principal.tenant_id, name, role, digest(secret), self.clock(), None
        )
        async with self.uow() as uow:
            await uow.api_keys.add(key)
            await uow.commit()
        self.audit.record(
            principal.tenant_id,
            audit.APIKEY_CREATED,
            principal=principal,
            target=key.id,
            data={"name": key.name, "role": key.role.value},
        )
        return key, secret

    async def revoke_api_key(self, principal: Principal, key_id: str) -> bool:
        principal.require(Action.MANAGE_API_KEYS)
        async with self.uow() as uow:
            key = await uow.api_keys.get(principal.tenant_id, key_id) if is_uuid(key_id) else None
            if key is None:
                raise NotFound("API key", key_id)
            if key.revoked_at is None:
                await uow.api_keys.revoke(key.id, self.clock())
                await uow.commit()
                self.audit.record(
                    principal.tenant_id,
                    audit.APIKEY_REVOKED,
                    principal=principal,
                    target=key.id,
                    data={"name": key.name},
                )
        # Announced again for a key revoked before: a signal may have been missed.
        await self._announce(Revocation(key.tenant_id, api_key_id=key.id, reason="API key revoked"))
        return True

    async def api_keys(self, principal: Principal) -> list[ApiKey]:
        principal.require(Action.MANAGE_API_KEYS)
        async with self.uow() as uow:
            return await uow.api_keys.list(principal.tenant_id)

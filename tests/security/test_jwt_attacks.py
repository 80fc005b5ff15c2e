"""Forged, stale and misused access tokens: UNAUTHENTICATED over HTTP, 4403 on a WebSocket.

The bad-header shapes, a plain alg=none token and a foreign HS256 signature are covered in
tests/api/test_auth.py; here the attacker also knows a valid token's claims (or, for the
claim-tampering cases, even the signing key) and varies one thing at a time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Team, add_member, register
from tests.support.client import GQL, error_code, op
from tests.support.ws import close_code, send_init, subscribe

HEARTBEAT = {"intervalSeconds": 0.05}
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(claims, default=str).encode()), ""]
    )


def _hmac(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """Sign by hand: PyJWT refuses the keys these attacks use (PEM, empty)."""
    signing_input = _unsigned(header, claims)[:-1]
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _hs(claims: dict[str, Any], key: str, **header: Any) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers=header or None)


async def _attacks(gql: GQL, team: Team, secret: str) -> dict[str, str]:
    """name -> forged token; `secret` is the server's real signing key."""
    claims = _claims(team.token)
    now = datetime.now(UTC)
    other = await register(gql)
    viewer = await add_member(gql, team, "VIEWER")
    gone = await add_member(gql, team, "MEMBER")
    await gql.ok("DeactivateUser", {"id": gone.id}, token=team.token)
    # an HS256 token whose "key" is an RSA public key: the RS/HS confusion attack
    confused_token = _hmac({"alg": "HS256", "typ": "JWT"}, claims, RSA_PUBLIC_PEM)
    bare = {k: v for k, v in claims.items() if k != "jti"}
    return {
        "alg none (no signature)": _unsigned({"alg": "none", "typ": "JWT"}, claims),
        "alg None capitalised": _unsigned({"alg": "None", "typ": "JWT"}, claims),
        "alg none with the original signature": (
            _unsigned({"alg": "none"}, claims) + team.token.rsplit(".", 1)[1]
        ),
        "HS256 with a wrong key": _hs(claims, "wrong-" + "k" * 40),
        "HS256 with an empty-ish key": _hs(claims, "\0" * 32),
        "RS256 signed by the attacker": jwt.encode(claims, RSA_KEY, algorithm="RS256"),
        "HS256 keyed with an RSA public key": confused_token,
        "kid pointing at an empty file": _hmac(
            {"alg": "HS256", "kid": "../../../../dev/null"}, claims, b""
        ),
        "expired (right key)": _hs(
            {**claims, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)}, secret
        ),
        "no exp (right key)": _hs({k: v for k, v in claims.items() if k != "exp"}, secret),
        "no jti (right key)": _hs(bare, secret),
        "tampered tid, old signature": (
            _unsigned({"alg": "HS256", "typ": "JWT"}, {**claims, "tid": other.tenant_id})[:-1]
            + "."
            + team.token.rsplit(".", 1)[1]
        ),
        "tampered sub, old signature": (
            _unsigned({"alg": "HS256", "typ": "JWT"}, {**claims, "sub": other.user_id})[:-1]
            + "."
            + team.token.rsplit(".", 1)[1]
        ),
        "tid of another tenant (right key)": _hs({**claims, "tid": other.tenant_id}, secret),
        "sub of another tenant's user (right key)": _hs({**claims, "sub": other.user_id}, secret),
        "sub of nobody (right key)": _hs({**claims, "sub": str(uuid.uuid4())}, secret),
        "tid of nobody (right key)": _hs({**claims, "tid": str(uuid.uuid4())}, secret),
        "sub not a uuid (right key)": _hs({**claims, "sub": "' OR 1=1 --"}, secret),
        "deactivated user": gone.token,
        "refresh token as access token": team.refresh,
        "viewer token with role ADMIN and a wrong key": _hs(
            {**_claims(viewer.token), "role": "ADMIN"}, "x" * 40
        ),
        "token with trailing garbage": team.token + "x",
        "token of two tokens": team.token + "." + team.token,
    }


@pytest.fixture
async def attacks(gql: GQL, team: Team, settings: Any) -> dict[str, str]:
    return await _attacks(gql, team, settings.jwt_secret)


async def test_forged_tokens_are_unauthenticated_over_http(
    gql: GQL, team: Team, attacks: dict[str, str]
) -> None:
    assert (await gql.ok("Me", token=team.token))["me"]["id"] == team.user_id
    answers: dict[str, Any] = {}
    for name, token in attacks.items():
        resp = await gql.http.post(
            "/graphql",
            json={"query": "{ me { id email tenant { id } } }"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code < 500, (name, resp.text)
        body = resp.json()
        answers[name] = error_code(body) if body.get("errors") else body.get("data")
    wrong = {name: got for name, got in answers.items() if got != "UNAUTHENTICATED"}
    assert wrong == {}, f"accepted or mis-answered forged tokens: {wrong}"


async def test_forged_tokens_cannot_open_a_websocket(
    gql: GQL, team: Team, attacks: dict[str, str]
) -> None:
    codes: dict[str, int | None] = {}
    for name, token in attacks.items():
        async with gql.connect_ws() as ws:
            await send_init(ws, {"authorization": f"Bearer {token}"})
            await subscribe(ws, "1", op("Heartbeat"), HEARTBEAT)
            codes[name] = await close_code(ws, "next", "connection_ack")
    assert {n: c for n, c in codes.items() if c != 4403} == {}


async def test_a_role_claim_grants_nothing(gql: GQL, team: Team, settings: Any) -> None:
    """Roles come from the database, never from the token: a correctly signed viewer
    token with extra claims is still a viewer."""
    viewer = await add_member(gql, team, "VIEWER")
    forged = _hs(
        {**_claims(viewer.token), "role": "ADMIN", "roles": ["ADMIN"], "admin": True},
        settings.jwt_secret,
    )
    assert (await gql.ok("Me", token=forged))["me"]["role"] == "VIEWER"
    denied = await gql.op("CreateApiKey", {"name": "x", "role": "ADMIN"}, token=forged)
    assert error_code(denied) == "FORBIDDEN"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace(".", "..", 1),
        lambda t: t.split(".")[0] + "." + t.split(".")[1],
        lambda t: "Bearer " + t,
    ],
    ids=["empty segment", "two segments", "double bearer"],
)
async def test_malformed_structure_is_unauthenticated(
    gql: GQL, team: Team, mutate: Callable[[str], str]
) -> None:
    assert error_code(await gql.op("Me", token=mutate(team.token))) == "UNAUTHENTICATED"

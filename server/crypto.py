"""AES-256-GCM for stored secrets, with a key id beside every ciphertext so the
master key can be rotated (`crewgraph rotate-key`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.errors import NotConfigured
from domain.secrets import Sealed, SecretError

_NONCE = 12


def parse_key(text: str) -> bytes:
    """A key is 32 random bytes, written as base64 (standard or URL-safe)."""
    text = text.strip()
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            raw = decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    raise ValueError(
        "a secret key must be 32 bytes encoded as base64 (e.g. `openssl rand -base64 32`)"
    )


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"crewgraph-key-id:" + key).hexdigest()[:12]


def new_key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


class AesGcmBox:
    def __init__(self, current: bytes, previous: list[bytes] | None = None) -> None:
        self._keys = {key_id(k): AESGCM(k) for k in [*(previous or []), current]}
        self.current_key_id = key_id(current)

    def seal(self, plaintext: str, context: str) -> Sealed:
        nonce = os.urandom(_NONCE)
        blob = nonce + self._keys[self.current_key_id].encrypt(
            nonce, plaintext.encode(), context.encode()
        )
        return Sealed(self.current_key_id, blob)

    def open(self, sealed: Sealed, context: str) -> str:
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise SecretError(
                f"stored secret was encrypted with key {sealed.key_id}, which is not configured "
                "(add it to CREWGRAPH_PREVIOUS_SECRET_KEYS and run `crewgraph rotate-key`)"
            )
        try:
            return aead.decrypt(
                sealed.blob[:_NONCE], sealed.blob[_NONCE:], context.encode()
            ).decode()
        except (InvalidTag, ValueError):
            raise SecretError("stored secret failed authentication: it was tampered with or moved")


class MissingKeyBox:
    """Stands in when no master key is configured: storing a secret says how to fix it."""

    current_key_id = "none"

    def seal(self, plaintext: str, context: str) -> Sealed:
        raise NotConfigured(
            "storing API keys needs CREWGRAPH_SECRET_KEY (or CREWGRAPH_SECRET_KEY_FILE)"
        )

    def open(self, sealed: Sealed, context: str) -> str:
        raise NotConfigured(
            "reading API keys needs CREWGRAPH_SECRET_KEY (or CREWGRAPH_SECRET_KEY_FILE)"
        )


def box_from_settings(
    secret_key: str | None, key_file: Path | None, previous: str | None
) -> AesGcmBox | MissingKeyBox:
    text = secret_key
    if text is None and key_file is not None:
        text = key_file.read_text()
    if not text:
        return MissingKeyBox()
    old = [parse_key(k) for k in (previous or "").split(",") if k.strip()]
    return AesGcmBox(parse_key(text), old)

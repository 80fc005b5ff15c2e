"""AES-256-GCM secret box: round trip, tampering, wrong context, rotation."""

from __future__ import annotations

import pytest

from domain.errors import NotConfigured
from domain.secrets import Sealed, SecretError
from server.crypto import AesGcmBox, MissingKeyBox, box_from_settings, new_key_text, parse_key


def test_round_trip_uses_fresh_nonces() -> None:
    box = AesGcmBox(parse_key(new_key_text()))
    a = box.seal("sk-secret", "ctx")
    b = box.seal("sk-secret", "ctx")
    assert a.blob != b.blob and a.key_id == b.key_id == box.current_key_id
    assert b"sk-secret" not in a.blob
    assert box.open(a, "ctx") == "sk-secret"


def test_tampered_ciphertext_is_a_clear_error() -> None:
    box = AesGcmBox(parse_key(new_key_text()))
    sealed = box.seal("sk-secret", "ctx")
    flipped = bytearray(sealed.blob)
    flipped[-1] ^= 1
    with pytest.raises(SecretError, match="tampered"):
        box.open(Sealed(sealed.key_id, bytes(flipped)), "ctx")


def test_ciphertext_moved_to_another_row_fails() -> None:
    box = AesGcmBox(parse_key(new_key_text()))
    sealed = box.seal("sk-secret", "llm_provider:tenant-a:p1")
    with pytest.raises(SecretError):
        box.open(sealed, "llm_provider:tenant-b:p1")


def test_rotation_reads_old_keys_and_seals_with_new() -> None:
    old, new = parse_key(new_key_text()), parse_key(new_key_text())
    sealed_old = AesGcmBox(old).seal("v", "c")
    rotated = AesGcmBox(new, [old])
    assert rotated.open(sealed_old, "c") == "v"
    resealed = rotated.seal("v", "c")
    assert resealed.key_id != sealed_old.key_id
    with pytest.raises(SecretError, match="not configured"):
        AesGcmBox(new).open(sealed_old, "c")


def test_key_parsing_and_missing_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        parse_key("too-short")
    assert isinstance(box_from_settings(None, None, None), MissingKeyBox)
    with pytest.raises(NotConfigured, match="CREWGRAPH_SECRET_KEY"):
        MissingKeyBox().seal("x", "c")

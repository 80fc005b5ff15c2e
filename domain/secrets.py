"""Encryption of stored secrets (LLM provider API keys) as a port."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from domain.errors import DomainError


class SecretError(DomainError):
    """A stored secret cannot be decrypted: tampered, or its key is gone."""

    code = "INTERNAL_SERVER_ERROR"


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    blob: bytes


class SecretBox(Protocol):
    current_key_id: str

    def seal(self, plaintext: str, context: str) -> Sealed: ...

    def open(self, sealed: Sealed, context: str) -> str: ...

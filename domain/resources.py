"""Pieces shared by every tenant resource: versions, names, ids, references."""

from __future__ import annotations

from collections.abc import Sequence

from domain.auth import is_uuid
from domain.errors import Conflict, NotFound


def require_id(kind: str, ident: str) -> str:
    if not is_uuid(ident):
        raise NotFound(kind, ident)
    return ident


def check_version(kind: str, current: int, expected: int | None) -> None:
    if expected is not None and expected != current:
        raise Conflict(
            f"{kind} was changed meanwhile: expected version {expected}, current is {current}",
            extensions={"currentVersion": current, "expectedVersion": expected},
        )


def duplicate_name(kind: str, name: str) -> Conflict:
    return Conflict(
        f"a {kind} named {name!r} already exists",
        extensions={"fields": {"name": "is already taken"}},
    )


def still_referenced(kind: str, ident: str, referrers: Sequence[str]) -> Conflict:
    shown = ", ".join(referrers[:10]) + (" …" if len(referrers) > 10 else "")
    return Conflict(
        f"{kind} {ident} is still used by {shown}; remove those references first",
        extensions={"referrers": list(referrers)},
    )


def missing_references(kind: str, wanted: Sequence[str], found: set[str]) -> list[str]:
    return [i for i in wanted if i not in found or not is_uuid(i)]


def not_found_refs(kind: str, field: str, missing: Sequence[str]) -> NotFound:
    err = NotFound(kind, ", ".join(missing))
    err.extensions["fields"] = {field: f"{kind} not found: {', '.join(missing)}"}
    return err

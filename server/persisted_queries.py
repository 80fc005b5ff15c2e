"""Persisted queries: Apollo's automatic persisted queries (APQ) and trusted documents.

APQ (on by default, `CREWGRAPH_PERSISTED_QUERIES`): a client sends
`extensions.persistedQuery = {"version": 1, "sha256Hash": "<hex>"}`, without `query`;
an unknown hash is answered with the error Apollo clients expect (message
`PersistedQueryNotFound`, `extensions.code` `PERSISTED_QUERY_NOT_FOUND`), and the client
sends the hash again with the document, which is checked against the hash (else
BAD_USER_INPUT), stored in Redis for `CREWGRAPH_PERSISTED_QUERY_TTL_SECONDS` and run.
The store is bounded: documents over `CREWGRAPH_PERSISTED_QUERY_MAX_BYTES` run but are
not stored, and past `CREWGRAPH_PERSISTED_QUERY_MAX_ENTRIES` the oldest are dropped (a
dropped hash is simply sent again with its document). Over HTTP POST and GET and in
WebSocket `subscribe` / `start` payloads.

Trusted documents (`CREWGRAPH_TRUSTED_DOCUMENTS=<manifest.json>`): only the operations of
the manifest run, by hash or by their exact text; anything else is FORBIDDEN with
`extensions.reason` `UNTRUSTED_DOCUMENT`, and nothing is stored. The manifest is Apollo's
persisted-query manifest (`{"format": "apollo-persisted-query-manifest", "operations":
[{"id", "body", ...}]}`) or a plain object `{"<sha256>": "<document>"}` (Relay's
persisted-queries JSON with sha256 ids); every id must be the SHA-256 of its document,
checked at start-up.

Persisted-query errors are answered before anything runs, as one GraphQL error with
`extensions.code` and `extensions.requestId`; a malformed `persistedQuery` is a 400."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
PERSISTED_QUERY_NOT_SUPPORTED = "PERSISTED_QUERY_NOT_SUPPORTED"
UNTRUSTED_DOCUMENT = "UNTRUSTED_DOCUMENT"
_HASH = re.compile(r"[0-9a-f]{64}")

# Store one document and keep the index of stored hashes within its bounds, atomically:
# entries older than the TTL leave the index, then the oldest go while it is over `max`.
_STORE = """
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], KEYS[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[2]))
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class PersistedQueryError(Exception):
    """A request the persisted-query rules refuse; `error()` is its GraphQL error."""

    def __init__(self, message: str, code: str, status: int = 200, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.extensions = extensions

    def error(self, request_id: str | None) -> dict[str, Any]:
        extensions: dict[str, Any] = {"code": self.code, **self.extensions}
        if request_id:
            extensions["requestId"] = request_id
        return {"message": self.message, "extensions": extensions}


def document_hash(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def load_manifest(path: Path) -> dict[str, str]:
    """hash -> document from a trusted-documents manifest; ValueError naming what is wrong."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"trusted documents {str(path)!r} unreadable: {exc}") from None
    pairs: list[tuple[object, object]]
    if isinstance(raw, dict) and isinstance(raw.get("operations"), list):
        pairs = []
        for i, operation in enumerate(raw["operations"]):
            if not isinstance(operation, dict):
                raise ValueError(f"trusted documents: operations[{i}] is not an object")
            pairs.append((operation.get("id"), operation.get("body")))
    elif isinstance(raw, dict) and "format" not in raw:
        pairs = list(raw.items())
    else:
        raise ValueError(
            "trusted documents: expected an Apollo persisted-query manifest "
            '({"format": ..., "operations": [{"id", "body"}]}) or {"<sha256>": "<document>"}'
        )
    documents: dict[str, str] = {}
    for ident, body in pairs:
        if not isinstance(ident, str) or not isinstance(body, str) or not body.strip():
            raise ValueError(f"trusted documents: entry {str(ident)[:80]!r} has no document text")
        if not _HASH.fullmatch(ident) or document_hash(body) != ident:
            raise ValueError(
                f"trusted documents: entry {ident[:80]!r} is not the lowercase SHA-256 of its "
                "document"
            )
        documents[ident] = body
    if not documents:
        raise ValueError(f"trusted documents {str(path)!r} list no operation")
    return documents


class RedisDocumentStore:
    """APQ documents in Redis, `<prefix>:apq:<hash>`, bounded in number and age."""

    def __init__(self, redis: Redis, prefix: str, ttl: int, max_entries: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:apq"
        self._ttl = ttl
        self._max = max_entries
        self._store = redis.register_script(_STORE)

    async def get(self, digest: str) -> str | None:
        value = await self._redis.get(f"{self._prefix}:{digest}")
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    async def put(self, digest: str, document: str) -> None:
        keys = [f"{self._prefix}:index", f"{self._prefix}:{digest}"]
        await self._store(keys=keys, args=[document, self._ttl, time.time(), self._max])


def _not_supported() -> PersistedQueryError:
    return PersistedQueryError("PersistedQueryNotSupported", PERSISTED_QUERY_NOT_SUPPORTED)


def _untrusted(what: str) -> PersistedQueryError:
    return PersistedQueryError(
        f"only registered operations run on this server; {what} is not one of them",
        "FORBIDDEN",
        reason=UNTRUSTED_DOCUMENT,
    )


class PersistedQueries:
    """Turns a request's `query` and `extensions` into the document to run."""

    def __init__(
        self,
        store: RedisDocumentStore | None,
        *,
        trusted: Mapping[str, str] | None = None,
        max_bytes: int = 32_000,
    ) -> None:
        self._store = store  # None: APQ off
        self._trusted = trusted  # not None: trusted-documents mode
        self._max_bytes = max_bytes

    @property
    def trusted_only(self) -> bool:
        return self._trusted is not None

    async def resolve(self, query: object, extensions: object) -> object:
        """The document to run (`query` itself when nothing persisted is involved);
        raises PersistedQueryError."""
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if persisted is None:
            if self._trusted is None or not isinstance(query, str):
                return query  # a missing query is reported by the GraphQL layer
            if document_hash(query) not in self._trusted:
                raise _untrusted("this document")
            return query
        digest = _digest(persisted)
        if isinstance(query, str) and query and document_hash(query) != digest:
            raise PersistedQueryError(
                "provided sha does not match query", "BAD_USER_INPUT", status=400
            )
        if self._trusted is not None:
            document = self._trusted.get(digest)
            if document is None:
                raise _untrusted(f"operation {digest}")
            return document
        if self._store is None:
            raise _not_supported()
        if isinstance(query, str) and query:
            if len(query.encode("utf-8")) <= self._max_bytes:
                await self._store.put(digest, query)
            return query
        document = await self._store.get(digest)
        if document is None:
            raise PersistedQueryError("PersistedQueryNotFound", PERSISTED_QUERY_NOT_FOUND)
        return document


def _digest(persisted: object) -> str:
    if not isinstance(persisted, dict):
        raise PersistedQueryError(
            "`extensions.persistedQuery` must be an object", "BAD_USER_INPUT", status=400
        )
    if persisted.get("version") != 1:
        raise PersistedQueryError(
            "Unsupported persisted query version (only 1)", "BAD_USER_INPUT", status=400
        )
    digest = persisted.get("sha256Hash")
    if not isinstance(digest, str) or not _HASH.fullmatch(digest.lower()):
        raise PersistedQueryError(
            "`extensions.persistedQuery.sha256Hash` must be a SHA-256 in hex",
            "BAD_USER_INPUT",
            status=400,
        )
    return digest.lower()

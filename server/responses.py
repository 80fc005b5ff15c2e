"""Serialising responses within the response-size cap.

Every GraphQL response body (HTTP) and every WebSocket frame is encoded here: a result
larger than `CREWGRAPH_MAX_RESPONSE_BYTES` is replaced, whole, by one LIMIT_EXCEEDED
error (no partial body), and one that cannot be encoded (it should not happen: every
JSON value is checked where it is produced) by an INTERNAL_SERVER_ERROR, never a 500
with a reset connection."""

from __future__ import annotations

import json
from typing import Any

import orjson
import structlog

from schema.errors import INTERNAL_MESSAGE

log = structlog.get_logger("crewgraph.http")

# Messages of graphql-transport-ws / graphql-ws whose payload is a result or error list.
_RESULT_MESSAGES = ("next", "data")
_ERROR_MESSAGES = ("error",)


def _request_id() -> dict[str, str]:
    """`{"requestId": ...}` of the request being answered (bound by server.app.RequestLimits
    for the request's, or the WebSocket connection's, tasks), or nothing."""
    rid = structlog.contextvars.get_contextvars().get("request_id")
    return {"requestId": rid} if isinstance(rid, str) else {}


def too_large_error(size: int, cap: int) -> dict[str, Any]:
    return {
        "message": f"response of {size} bytes exceeds the limit of {cap} bytes; ask for fewer "
        "items (smaller `first`) or fewer fields",
        "extensions": {"code": "LIMIT_EXCEEDED", "size": size, "limit": cap, **_request_id()},
    }


def _internal_error() -> dict[str, Any]:
    return {
        "message": INTERNAL_MESSAGE,
        "extensions": {"code": "INTERNAL_SERVER_ERROR", **_request_id()},
    }


# Types the standard library refuses: they stay refused (INTERNAL_SERVER_ERROR), never
# silently encoded the way orjson would by default.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _dumps(data: object) -> bytes:
    try:
        # Several times faster than the standard library on a whole response.
        return orjson.dumps(data, option=_ORJSON_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        # What orjson refuses and the standard library takes (non-string keys, integers
        # past 64 bits, nesting past 254 levels), or the standard library's own error.
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _replacing(data: object, error: dict[str, Any]) -> object:
    """`data` with its result replaced by `error`, keeping the message envelope."""
    if isinstance(data, dict) and isinstance(data.get("type"), str):
        kind = data["type"]
        if kind in _RESULT_MESSAGES:
            return {**data, "payload": {"data": None, "errors": [error]}}
        if kind in _ERROR_MESSAGES:
            return {**data, "payload": [error]}
        return data  # protocol messages (ack, pong, complete) are tiny
    if isinstance(data, dict) and set(data) == {"payload"}:
        # A part of a multipart HTTP subscription: the client still needs the envelope.
        return {"payload": {"data": None, "errors": [error]}}
    return {"data": None, "errors": [error]}


def encode_capped(data: object, cap: int) -> str:
    """`data` as compact JSON of at most `cap` bytes (UTF-8), or the error that replaces it."""
    try:
        encoded = _dumps(data)
    except (TypeError, ValueError, RecursionError) as exc:
        log.error("response not serialisable", error=f"{type(exc).__name__}: {exc}"[:300])
        return _dumps(_replacing(data, _internal_error())).decode()
    if len(encoded) > cap:
        log.warning("response too large", size=len(encoded), limit=cap)
        return _dumps(_replacing(data, too_large_error(len(encoded), cap))).decode()
    return encoded.decode()

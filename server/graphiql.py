"""GraphiQL at GET /graphql (laptop profile), served entirely by this server.

The page (server/static/graphiql) loads React, GraphiQL, its explorer plugin and graphql-ws
from server/static/vendor: the npm packages pinned in frontend/package-lock.json, copied
there by `make install` (frontend/vendor.py). Nothing on the page comes from elsewhere, so
its Content-Security-Policy allows this origin only. Without the copied files (a clone
installed without npm) the page says how to get them instead of "Loading..." forever.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount

from server.static_files import HeaderedStaticFiles

STATIC = Path(__file__).resolve().parent / "static"
PAGE_DIR = STATIC / "graphiql"
VENDOR = STATIC / "vendor"

# style-src needs 'unsafe-inline': GraphiQL's dialogs and CodeMirror write inline `style`
# attributes and a <style> element at run time. Scripts stay 'self' only (no inline script,
# no eval); fonts and icons are data: URIs inside GraphiQL's CSS; `connect-src 'self'`
# covers both the HTTP endpoint and the same-origin WebSocket.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": CSP,
    "cache-control": "no-cache",  # revalidate (ETag): an upgrade shows on the next reload
    "cross-origin-opener-policy": "same-origin",
}

_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Crewgraph GraphiQL</title></head>
<body><h1>GraphiQL is not installed on this server</h1>
<p>Its files (server/static/vendor) come from the npm packages locked in
frontend/package-lock.json. Run <code>make install</code> where Node.js and npm are
available (they are needed at install time only), then reload.</p>
<p>The API itself works: POST GraphQL requests to this URL.</p></body></html>
"""


def vendor_installed() -> bool:
    return (VENDOR / "MANIFEST.json").is_file()


@cache
def _page() -> str:
    return (PAGE_DIR / "index.html").read_text()


def graphiql_page() -> Response:
    body = _page() if vendor_installed() else _MISSING
    return HTMLResponse(body, headers=_HEADERS)


def static_routes() -> list[BaseRoute]:
    """`/static/vendor/...` (the locked packages' files; the dashboard uses graphql-ws from
    here too) and `/static/graphiql/...` (the page's own script, style and icon)."""
    return [
        # Absent until `make install` has copied it: every path answers 404 meanwhile.
        Mount(
            "/static/vendor",
            app=HeaderedStaticFiles(directory=VENDOR, headers=_HEADERS, optional=True),
        ),
        Mount("/static/graphiql", app=HeaderedStaticFiles(directory=PAGE_DIR, headers=_HEADERS)),
    ]

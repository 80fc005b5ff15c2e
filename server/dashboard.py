"""The live dashboard at /dashboard: static ES modules and CSS (server/static/dashboard),
served as they are (no build step), talking only to this server's /graphql.

Its pages carry a strict Content-Security-Policy: scripts, styles, images and connections
from this origin only (`connect-src 'self'` covers the same-origin WebSocket), no inline
script or style, no framing, no form posting anywhere."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from server.graphiql import vendor_installed
from server.static_files import HeaderedStaticFiles

STATIC = Path(__file__).resolve().parent / "static"
DASHBOARD = STATIC / "dashboard"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": CSP,
    # Revalidate every time (ETag): a deploy shows up on the next reload.
    "cache-control": "no-cache",
    "cross-origin-opener-policy": "same-origin",
}


_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Crewgraph dashboard</title></head>
<body><h1>The dashboard is not installed on this server</h1>
<p>It needs graphql-ws from the npm packages locked in frontend/package-lock.json
(server/static/vendor). Run <code>make install</code> where Node.js and npm are available
(at install time only), then reload.</p></body></html>
"""


async def _index(_: Request) -> Response:
    if not vendor_installed():  # a blank page would not say why
        return HTMLResponse(_MISSING, headers=_HEADERS)
    return FileResponse(DASHBOARD / "index.html", headers=_HEADERS)


def dashboard_routes() -> list[BaseRoute]:
    """`/dashboard` (the page) and `/dashboard/<file>` (its modules, styles, icon)."""
    return [
        Route("/dashboard", _index, methods=["GET", "HEAD"]),
        Route("/dashboard/", _index, methods=["GET", "HEAD"]),
        Mount("/dashboard", app=HeaderedStaticFiles(directory=DASHBOARD, headers=_HEADERS)),
    ]

"""The release-log explorer: a static page (HTML, CSS, three small ES modules) served from the package.

It reads a tenant's log through the ordinary log routes with an auditor (or tenant-admin) token that the
page keeps in memory and sends only as an Authorization header. The server here only hands out files:
nothing in these routes reads a token or the database. Every response carries a strict Content Security
Policy (scripts, styles and fetches from this origin only, no inline code, no framing, no form posts).
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from litestar import Response, Router, get
from litestar.params import FromPath

from keyserver.tenancy import TENANT_NAME_RE

STATIC: Final = resources.files("keyserver.explorer") / "static"
MEDIA_TYPES: Final = {
    "explorer.js": "text/javascript",
    "merkle.js": "text/javascript",
    "note.js": "text/javascript",
    "explorer.css": "text/css",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@get("/{tenant:str}", include_in_schema=False, sync_to_thread=False)
def page(tenant: FromPath[str]) -> Response[bytes]:
    """The page for one tenant's log (the tenant's name is read from the path by the page's script)."""
    if not TENANT_NAME_RE.match(tenant):
        return Response(b"not found\n", status_code=404, media_type="text/plain", headers=HEADERS)
    return Response(_file("index.html"), media_type="text/html", headers=HEADERS)


@get("/static/{file:str}", include_in_schema=False, sync_to_thread=False)
def asset(file: FromPath[str]) -> Response[bytes]:
    media_type = MEDIA_TYPES.get(file)  # a fixed list: no path from the request reaches the file system
    if media_type is None:
        return Response(b"not found\n", status_code=404, media_type="text/plain", headers=HEADERS)
    return Response(_file(file), media_type=media_type, headers=HEADERS)


explorer_router = Router(path="/explorer", route_handlers=[page, asset], include_in_schema=False)

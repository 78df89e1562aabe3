"""The webmail's static files (stylesheet, scripts): served from memory, versioned, cached and compressed.

Theory of operation
-------------------
The files of `static/` are few and small (tens of kilobytes), so `Assets` reads them once when the webmail is made,
with each file's SHA-256 (its version) and its gzip form (RFC 1952). Pages link them as
`/mail/static/NAME?v=VERSION` (`url()`, a template global), so a new file is a new URL: a request carrying the
current version is answered `Cache-Control: public, max-age=31536000, immutable` (RFC 9111 §5.2.2.1; RFC 8246),
and browsers do not ask again; without it (or with an old one), `no-cache`, so a browser revalidates with the
ETag (RFC 9110 §8.8.3) and gets 304 (§15.4.5) while it has the current file. A client that accepts gzip
(`Accept-Encoding`, RFC 9110 §12.5.3) gets the compressed form with `Content-Encoding: gzip` and
`Vary: Accept-Encoding`; pages themselves are not compressed (they carry the CSRF token: no BREACH oracle).

Invariants
1. Only the files found in `static/` at start are served, by exact name; anything else is 404 (no paths).
2. The answer's bytes are the file's (decompressed, for gzip) and its ETag is its version.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    data: bytes
    gzipped: bytes
    version: str  # the first 16 hex digits of the SHA-256 of `data`
    media_type: str


def _accepts_gzip(header: str) -> bool:
    """Does an Accept-Encoding value accept gzip (RFC 9110 §12.5.3: a coding with q=0 is refused)?"""
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


class Assets:
    """The files of `directory` (module doc). `url(name)` is the versioned path pages link."""

    def __init__(self, directory: Path) -> None:
        self.files: dict[str, Asset] = {}
        for path in sorted(directory.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                data = path.read_bytes()
                media = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.files[path.name] = Asset(data, gzip.compress(data, 9, mtime=0),
                                              hashlib.sha256(data).hexdigest()[:16], media)

    def url(self, name: str) -> str:
        """`/mail/static/NAME?v=VERSION`; KeyError for a file that is not there (a template error, found by tests)."""
        return f"/mail/static/{name}?v={self.files[name].version}"

    async def serve(self, request: Request) -> Response:
        """GET /mail/static/{name} (module doc)."""
        asset = self.files.get(str(request.path_params["name"]))
        if asset is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        etag = f'"{asset.version}"'
        cache = IMMUTABLE if request.query_params.get("v") == asset.version else "no-cache"
        headers = {"Cache-Control": cache, "ETag": etag, "Vary": "Accept-Encoding"}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        if _accepts_gzip(request.headers.get("accept-encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
        return Response(asset.data, media_type=asset.media_type, headers=headers)

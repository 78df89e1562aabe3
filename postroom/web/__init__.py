"""The HTTP side of Postroom: health and metrics today; webmail, admin and the JSON API later."""

from postroom.web.app import create_app
from postroom.web.server import HttpServer, serve_http

__all__ = ["HttpServer", "create_app", "serve_http"]

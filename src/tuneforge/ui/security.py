"""Safe by default: which addresses the UI may bind, its login, and a guard against cross-site requests.

    check_bind("0.0.0.0", auth=None)                      # ConfigError: another address needs auth
    app.add_middleware(HostOriginGuard, allowed_hosts=allowed_hosts("127.0.0.1", 7860))

Gradio omits CORS headers for a foreign Origin but still runs the request, and accepts any Host header
(DNS rebinding: evil.example resolving to 127.0.0.1). The guard answers 403 to both before Gradio sees them:
a request whose Host is not one of this server's names, and any state-changing request (not GET/HEAD/
OPTIONS, or a websocket) whose Origin is not this server. Scripts without an Origin (curl, gradio_client)
still pass the Host check and the login.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from urllib.parse import urlsplit

from tuneforge.errors import ConfigError

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """'user:password' -> (user, password); None stays None."""
    if auth is None:
        return None
    user, sep, password = str(auth).partition(":")
    if not sep or not user or not password:
        raise ConfigError("auth must be 'user:password' with both parts non-empty, e.g. --auth alice:s3cret")
    return user, password


def check_bind(host: str, auth: str | None) -> None:
    """Refuse to listen beyond this machine without a login."""
    if not is_loopback(host) and auth is None:
        raise ConfigError(
            f"listening on {host} lets other machines train and load models here; add "
            "--auth user:password, or keep the default 127.0.0.1"
        )


def allowed_hosts(host: str, port: int) -> set[str]:
    """Host names (without port) that requests may carry: loopback, the bound address, this machine's names."""
    names = set(LOOPBACK_NAMES) | {host}
    if not is_loopback(host):
        hostname = socket.gethostname()
        names |= {hostname, socket.getfqdn()}
        with contextlib.suppress(OSError):  # a machine without DNS for its own name
            names |= set(socket.gethostbyname_ex(hostname)[2])
    names |= {n.strip() for n in os.environ.get("TUNEFORGE_UI_ALLOWED_HOSTS", "").split(",") if n.strip()}
    return {n.lower() for n in names}


def _host_name(value: str) -> str:
    """'example.org:7860' -> 'example.org'; '[::1]:7860' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostOriginGuard:
    """ASGI middleware: 403 for a foreign Host header, and for state-changing requests from a foreign Origin."""

    def __init__(self, app, allowed_hosts: set[str]):
        self.app = app
        self.allowed = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        reason = None
        if _host_name(host) not in self.allowed:
            reason = "this server does not answer to that host name"
        elif scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not self._same_origin(origin, host):
                reason = "requests from another site may not act on this server"
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = f"403 Forbidden: {reason}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _same_origin(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # 'null' (sandboxed frames, file://) included
        return parts.netloc.lower() == host.lower() and _host_name(parts.netloc) in self.allowed

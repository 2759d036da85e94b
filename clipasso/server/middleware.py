"""Request guards that run before any route: the bearer token, the upload size limit, what a web page may
send, and the headers that keep the live page out of other pages' frames."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .hosts import is_loopback_host
from .jobs import ShuttingDown


#: How often an upload that waits for its next chunk looks whether the server is stopping.
CLOSING_POLL_SECONDS = 0.25


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BearerAuth:
    """Refuse every request without one `Authorization: Bearer TOKEN` (the scheme in any case, as HTTP has
    it; the token compared in constant time), except `/`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    def _authorised(self, scope: Scope) -> bool:
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) != 1:  # none, or two (which one counts would be up to the server)
            return False
        scheme, _, token = given[0].partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (scope["path"] == "/" and scope["method"] in ("GET", "HEAD")):
            if not self._authorised(scope):
                response = error_response(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                                  {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UploadTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload too large: the limit is {limit / 1e6:g} MB")


#: Retry-After (seconds) of the 503 for what comes while the server stops.
RETRY_AFTER_SHUTDOWN = "10"


class UploadCutShort(StarletteHTTPException):
    """An upload still arriving when the server starts to stop (an HTTPException: FastAPI passes those on
    from the form parsing, where it turns other errors into a 400)."""

    def __init__(self) -> None:
        super().__init__(503, str(ShuttingDown()), headers={"Retry-After": RETRY_AFTER_SHUTDOWN})


class UploadLimit:
    """Refuse request bodies over `limit` bytes while they arrive, never buffering more than that; and
    bodies still arriving when the server starts to stop.

    A declared Content-Length over the limit is refused before reading; a chunked body is counted
    and refused at the first chunk past the limit (raised from `receive`, so the handler stops). A slow
    upload would hold the shutdown until uvicorn cancels it (a 500 and a traceback): once `closing()` says
    the server stops, reading the body ends with UploadCutShort (503, try again later).
    """

    def __init__(self, app: ASGIApp, limit: int, closing: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.limit = limit
        self.closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await error_response(413, UploadTooLarge(self.limit).detail)(scope, receive, send)
            return
        # Without a body (an event stream's GET, say) every receive is the wait for a disconnect.
        seen, whole = 0, declared in (b"", b"0") and b"transfer-encoding" not in headers

        async def counting_receive() -> dict:
            nonlocal seen, whole
            if whole:  # the body has come: what follows is the wait for a disconnect
                return await receive()
            message = await self._receive_unless_closing(receive)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise UploadTooLarge(self.limit)
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, counting_receive, send)

    async def _receive_unless_closing(self, receive: Receive) -> dict:
        """The next part of the body; UploadCutShort once the server stops, whether the parts keep coming or
        the next one is slow to."""
        if self.closing():
            raise UploadCutShort()
        arriving = asyncio.ensure_future(receive())
        while not (await asyncio.wait({arriving}, timeout=CLOSING_POLL_SECONDS))[0]:
            if self.closing():
                arriving.cancel()
                raise UploadCutShort()
        return arriving.result()


#: On every response: no other page may frame the live page (and trick a click on its Cancel), browsers take
#: each response as the type it says, and no address of this server is sent on to another site.
SAFE_HEADERS = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
                (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class BrowserGuard:
    """Refuse what a web page could send: a Host that is not a loopback name (unless a token protects the
    server, which no page can add cross-site), and any Origin other than the server's own (403). Every
    response carries SAFE_HEADERS."""

    def __init__(self, app: ASGIApp, check_host: bool) -> None:
        self.app = app
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1")
            origin = headers.get(b"origin")
            refusal = None
            if self.check_host and not is_loopback_host(urlsplit(f"//{host}").hostname or ""):
                refusal = (f"refused: this server answers requests addressed to 127.0.0.1 or localhost, not {host!r} "
                           "(start it with --token to serve other names)")
            elif origin is not None and origin.decode("latin-1") != f"{scope.get('scheme', 'http')}://{host}":
                refusal = "refused: requests from web pages of other origins are not accepted"
            send = _with_safe_headers(send)
            if refusal:
                await error_response(403, refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _with_safe_headers(send: Send) -> Send:
    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SAFE_HEADERS]}
        await send(message)

    return sending

"""The ASGI receiver of :meth:`Webhooks.asgi_receiver`: verification, credentials, tracing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from onex_compose.capabilities import _context
from onex_compose.capabilities.webhook._model import WebhookVerificationError

if TYPE_CHECKING:
    from onex_compose.capabilities.webhook._webhooks import Webhooks

__all__ = ["Receiver"]


class Receiver:
    """The ASGI app of :meth:`Webhooks.asgi_receiver`."""

    def __init__(self, hooks: Webhooks, handler: Callable[..., Any], path: str,
                 secret: str | Sequence[str] | None) -> None:
        self.hooks = hooks
        self.handler = handler
        self.path = path
        self.secret = secret
        if secret is None:
            hooks._secrets_for(None)  # fail now, not at the first request

    def __repr__(self) -> str:
        name = getattr(self.handler, "__name__", repr(self.handler))
        return f"WebhookReceiver(path={self.path!r}, handler={name})"

    async def __call__(self, scope: Mapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("path", "/") != self.path:
            await _respond(send, 404, b"not found")
            return
        if scope.get("method") != "POST":
            await _respond(send, 405, b"method not allowed", [(b"allow", b"POST")])
            return
        limit = self.hooks.config.max_payload_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            part = msg.get("body", b"")
            size += len(part)
            if size > limit:
                await _respond(send, 413, b"payload too large")
                return
            chunks.append(part)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        hooks = self.hooks
        try:
            payload = await hooks.averify(body, headers, self.secret)
        except WebhookVerificationError as exc:
            code = 400 if exc.reason in ("missing_headers", "malformed") else 401
            await _respond(send, code, exc.reason.encode())
            return
        try:
            await self._handle(payload, headers)
        except Exception as exc:
            hooks._log.warning("webhook: receiver handler failed for {}: {!r}",
                               headers.get("webhook-id"), exc)
            await _respond(send, 500, b"handler failed")
            return
        await _respond(send, 204, b"")

    async def _handle(self, payload: Any, headers: Mapping[str, str]) -> None:
        hooks = self.hooks
        token = None
        if hooks._authentication:
            creds = _credentials_from(headers)
            if creds is not None:
                token = _context.credentials.set(creds)
        try:
            if hooks._tracer is not None:
                with hooks._tracer.continue_from(headers, kind="server"), hooks._tracer.span(
                        "webhook.receive", kind="server",
                        attributes={"webhook.id": headers.get("webhook-id", "")}):
                    await self._call(payload)
            else:
                await self._call(payload)
        finally:
            if token is not None:
                _context.credentials.reset(token)

    async def _call(self, payload: Any) -> None:
        result = self.handler(payload)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result


def _credentials_from(headers: Mapping[str, str]) -> _context.Credentials | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return _context.Credentials("bearer", value.strip())
        if scheme.lower() in ("apikey", "api-key", "api_key") and value.strip():
            return _context.Credentials("api_key", value.strip())
    key = headers.get("x-api-key")
    if key:
        return _context.Credentials("api_key", key)
    return None


async def _respond(send: Callable[[Any], Awaitable[None]], status: int, body: bytes,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""The request body size limit (``pipeline.api_max_body_bytes``), as pure ASGI middleware.

It runs before any route reads the body, so an oversized request never reaches the
JSON parser (which runs on the event loop: three 84 MB bodies once stalled ``/livez``
for 9 s and took the API to 1.2 GB):

* a declared ``Content-Length`` over the limit is refused at once, unread;
* otherwise the body (chunked uploads included) is read here, counting bytes, and
  refused as soon as the count passes the limit -- at most limit + one chunk is ever
  held; a body within the limit is handed to the app unchanged.

Refusals are ``413`` with the JSON shape of the API's other errors (``{"detail": ...}``).
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _error(send, 400, "the Content-Length header is not a non-negative integer")
            return
        if declared > self.max_bytes:
            await self._refuse(send, f"{declared:,} bytes declared")
            return
        try:
            body = await self._read(receive)
        except BodyTooLarge:
            await self._refuse(send, "more than that sent")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Any) -> list[Message]:
        """Every ``http.request`` message of the body (a disconnect ends it early)."""
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                raise BodyTooLarge
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, send: Any, what: str) -> None:
        await _error(
            send, 413, f"request body too large: at most {self.max_bytes:,} bytes (pipeline.api_max_body_bytes); {what}"
        )


def _content_length(scope: Message) -> int | None:
    """The declared length; 0 when absent (chunked or no body); None when malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return 0


def _replay(messages: list[Message], receive: Any) -> Any:
    """A `receive` that hands the buffered messages over, then waits as the server's does
    (for the client's disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _error(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread rest of the body makes the connection unusable
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

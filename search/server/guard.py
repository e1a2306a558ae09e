"""What every request passes before a route: the API key for writes, the body size, JSON errors, the access log.

`Guard` is a plain ASGI middleware, so it answers 401/403/413 before any body is parsed: an
unauthenticated or oversized write costs no JSON decoding. `AccessLog` writes one line per request
(method, path, status, milliseconds) to the `bertdex.access` logger; whoever runs the server
decides where that goes. Neither routes nor validates fields.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# how pydantic names the alternatives of a union in an error's location
_UNION_TAG = re.compile(r"^(constrained-)?(str|int|float|bool|none|list\[.*\]|dict\[.*\])$")


def error_body(status: int, message: str, details: list | None = None) -> dict:
    """The one error shape: error_body(404, "no entry with key 'x'") -> {"error": ..., "status": 404}."""
    body = {"error": message, "status": status}
    if details:
        body["details"] = details
    return body


def validation_message(errors: list[dict], limit: int = 5) -> str:
    """Pydantic errors as one line: "documents[3].text: String should have at least 1 character".

    The alternatives of a union share one place: "question: Input should be a valid string, or ...".
    """
    places: dict[str, list[tuple[str, str]]] = {}
    for error in errors:
        if error.get("type") == "json_invalid":
            return "the body is not valid JSON: " + str(error.get("ctx", {}).get("error", "syntax error"))
        where = ""
        for step in error.get("loc", ()):
            if step == "body" and not where or isinstance(step, str) and _UNION_TAG.match(step):
                continue
            where += f"[{step}]" if isinstance(step, int) else (f".{step}" if where else str(step))
        places.setdefault(where or "body", []).append((str(error.get("type", "")), str(error.get("msg", "invalid"))))
    parts = [f"{where}: {_one_message(found)}" for where, found in list(places.items())[:limit]]
    more = f" (and {len(places) - limit} more)" if len(places) > limit else ""
    return "; ".join(parts) + more


def _one_message(found: list[tuple[str, str]]) -> str:
    """A union's errors at one place: the alternative that had the right type speaks, else all do."""
    specific = [message for kind, message in found if not kind.endswith("_type")] or [m for _, m in found]
    return ", or ".join(dict.fromkeys(specific))


def authorized(headers: dict[str, str], api_key: str | None) -> bool:
    """Whether the request carries `api_key` (X-API-Key, or Authorization: Bearer), compared in constant time.

    Headers arrive decoded as latin-1; encoding them back gives the bytes sent, so a key with
    non-ASCII characters matches when the client sends it as UTF-8.
    """
    given = headers.get("x-api-key") or ""
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        given = given or token.strip()
    return api_key is not None and hmac.compare_digest(given.encode("latin-1", "replace"), api_key.encode("utf-8"))


def content_type_problem(method: str, headers: dict[str, str]) -> str | None:
    """Why a body cannot be read as JSON from its Content-Type, or None: every body the service takes is JSON.

    content_type_problem("POST", {}) -> "send the body as JSON with the header Content-Type: application/json (none was sent)"
    """
    if method not in ("POST", "PUT", "PATCH"):
        return None
    given = headers.get("content-type", "")
    media = given.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    sent = f"{given[:80]!r} was sent" if given else "none was sent"
    return f"send the body as JSON with the header Content-Type: application/json ({sent})"


def is_write(method: str, path: str) -> bool:
    return method in WRITE_METHODS and (path in ("/documents", "/feedback") or path.startswith("/documents/"))


class Guard:
    """ASGI middleware: a keyless server refuses requests addressed to another name (403); writes need the key
    (401) on a writable server (403); bodies stay under a limit (413)."""

    def __init__(self, app, service, max_body_bytes: int):
        self.app, self.service, self.max_body_bytes = app, service, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _with_headers(send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        misdirected = self.service.misdirected(headers)
        if misdirected:
            return await _reply(send, 403, misdirected)
        if is_write(scope["method"], scope["path"]):
            refused = self.service.refusal(scope["path"], headers)
            if refused:
                extra = [(b"www-authenticate", b"Bearer")] if refused[0] == 401 else None
                return await _reply(send, *refused, extra)
        if scope["method"] not in WRITE_METHODS:
            return await self.app(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _reply(send, 413, f"the request body is over {self.max_body_bytes:,} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await _reply(send, 413, f"the request body is over {self.max_body_bytes:,} bytes")
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = content_type_problem(scope["method"], headers) if body else None
        if problem:
            return await _reply(send, 415, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class TimedRequests:
    """ASGI middleware base: after each HTTP request, `done(scope, status, seconds)` (status 500 when the app
    raised before answering). The access log and the metrics are its two users."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.done(scope, status, time.perf_counter() - started)

    def done(self, scope, status: int, seconds: float) -> None:
        raise NotImplementedError


class AccessLog(TimedRequests):
    """`POST /search 200 12.3ms` per request on the `bertdex.access` logger (INFO);
    `as_json`: one JSON object instead, {"time", "method", "path", "status", "ms", "client"}."""

    logger = logging.getLogger("bertdex.access")

    def __init__(self, app, as_json: bool = False):
        super().__init__(app)
        self.as_json = as_json

    def done(self, scope, status: int, seconds: float) -> None:
        ms = seconds * 1000
        if self.as_json:
            client = scope.get("client")
            self.logger.info("%s", json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
                "method": scope["method"], "path": scope["path"], "status": status, "ms": round(ms, 1),
                "client": client[0] if client else None}, ensure_ascii=False))
        else:
            self.logger.info("%s %s %d %.1fms", scope["method"], scope["path"], status, ms)


def _with_headers(send):
    async def sending(message):
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
        await send(message)
    return sending


async def _reply(send, status: int, message: str, extra: list | None = None) -> None:
    payload = json.dumps(error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

"""What the routes share: the searcher and its batcher, the one write lock, the feedback store, and who may write.

Also the checks made before serving: whether a keyless server may take writes on this address,
and binding the port (so a busy port is one clear error before anything is announced). This
module does not route requests (search.server.app) nor parse bodies (search.server.requests).
"""

from __future__ import annotations

import ipaddress
import socket
import sqlite3
import os
import threading
from importlib import resources
from pathlib import Path

from fastapi import HTTPException

from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError
from indexer.store.feedback import FeedbackStore
from indexer.store.folder import IndexWriter, connect
from search.searcher import Searcher
from search.server import answers
from search.server.batching import MicroBatcher
from search.server.querylog import QueryLog

WRITE_WAIT_SECONDS = 30
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
# Swagger UI from the fastapi-offline package, so /docs works without internet
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
               "favicon.png": "image/png"}
NO_KEY = "started without an API key: set BERTDEX_API_KEY or --api-key-file to take writes"
NEEDS_KEY = "a valid API key is required (X-API-Key or Authorization: Bearer)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_line(*, writable: bool, read_only: bool, workers: int, folder_writable: bool) -> str:
    """What `serve` prints about writes and feedback: what the Service it starts will do (and /info say)."""
    if workers > 1:
        return f"read-only: {workers} workers over one folder take no writes, no feedback, no query log"
    if read_only:
        return "read-only: no writes, no feedback, no query log"
    if not folder_writable:
        return "the index folder is read-only: no writes, no feedback, no query log"
    return "writes and feedback need the API key" if writable else "entries read-only without an API key; feedback open on loopback"


def folder_is_writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK) and os.access(folder / "bertdex.db", os.W_OK)


def host_name(header: str) -> str:
    """The name of a Host header: host_name("[::1]:8000") -> "::1"; host_name("localhost:80") -> "localhost"."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def check_bind(host: str, api_key: str | None, read_only: bool) -> bool:
    """Whether the server may take writes; refuses a keyless writable server off loopback."""
    if api_key is not None and not api_key.strip():
        raise BertdexError("the API key is empty: put the key in BERTDEX_API_KEY or in the --api-key-file")
    if api_key is None and not read_only and not is_loopback(host):
        raise BertdexError(f"refusing to serve on {host} without an API key: set BERTDEX_API_KEY or --api-key-file, "
                           "or pass --read-only")
    return api_key is not None and not read_only


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port, or one BertdexError line (port busy, no permission, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise BertdexError(f"--host {host}: cannot resolve it ({error})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == 98:  # EADDRINUSE
            raise BertdexError(f"--port {port}: already in use on {host} (another server?); choose another port") from None
        raise BertdexError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


class Service:
    """The searcher, its batcher, the write lock, and the feedback store (None when feedback and the log are off).

    `feedback`: take agents' verdicts (with the key when the server has one); `query_log`: log each question.
    """

    def __init__(self, folder: Path, api_key: str | None, writable: bool, encoder: Encoder | None, window: float,
                 max_batch: int, threads: int | None = None, *, feedback: bool = True, query_log: bool = True,
                 read_only_reason: str | None = None, host: str = "127.0.0.1"):
        self.folder = Path(folder)
        self.searcher = Searcher(self.folder, encoder=encoder, threads=threads)
        self.batcher = MicroBatcher(self.searcher, window=window, max_questions=max_batch)
        self.api_key = api_key
        self.folder_writable = folder_is_writable(self.folder)
        self.writable = writable and api_key is not None and self.folder_writable
        # why writes (and feedback) are refused, as the refusals say it: never a reason that does not hold
        self.read_only_reason = read_only_reason or (
            NO_KEY if api_key is None else f"index {self.folder} is read-only" if not self.folder_writable
            else "started read-only")
        # a keyless server on loopback answers only requests addressed to a loopback name (DNS rebinding)
        self.checks_host = api_key is None and is_loopback(host)
        self.write_lock = threading.Lock()
        if not self.folder_writable:
            feedback = query_log = False  # a read-only folder: answers only
        self.store = FeedbackStore(self.folder) if feedback or query_log else None
        self.takes_feedback, self.query_log = feedback, query_log
        self.logger = QueryLog(self.store) if query_log else None
        self.reader = connect(self.folder, readonly=True)
        self._reader_lock = threading.Lock()
        self._facets: tuple[int, dict] = (-1, {})
        static = resources.files("search.server") / "static"
        self.pages = {path: (static / name).read_bytes() for path, (name, _) in PAGES.items()}
        bundled = resources.files("fastapi_offline") / "static"
        self.docs_assets = {name: (bundled / name).read_bytes() for name in DOCS_ASSETS}

    @property
    def feedback_access(self) -> str:
        """off (--read-only), key (the server has a write key: feedback needs it), or open (keyless loopback)."""
        return "off" if not self.takes_feedback else ("key" if self.api_key is not None else "open")

    def misdirected(self, headers) -> str | None:
        """Why a request's Host header is refused (a keyless loopback server, another name), else None."""
        host = headers.get("host")
        if not self.checks_host or host is None or is_loopback(host_name(host)):
            return None
        return (f"the Host header {host[:80]!r} is not a loopback name: a server without an API key answers "
                "only requests addressed to 127.0.0.1, [::1] or localhost")

    def authorized(self, headers) -> bool:
        from search.server.guard import authorized

        return authorized(headers, self.api_key)

    def refusal(self, path: str, headers) -> tuple[int, str] | None:
        """(status, message) when a write to `path` must be refused, else None."""
        if path == "/feedback":
            if self.feedback_access == "off":
                if not self.folder_writable:
                    return 503, f"index {self.folder} is read-only: this server takes no feedback"
                return 403, f"this server takes no feedback ({self.read_only_reason})"
            return (401, NEEDS_KEY) if self.feedback_access == "key" and not self.authorized(headers) else None
        if not self.writable:
            if not self.folder_writable:
                return 503, f"index {self.folder} is read-only"  # as the writer says it (IndexReadOnly)
            return 403, f"this server is read-only ({self.read_only_reason})"
        return None if self.authorized(headers) else (401, NEEDS_KEY)

    def write(self, change):
        """Run change(writer) under the write lock; commit unless it returns False."""
        if not self.write_lock.acquire(timeout=WRITE_WAIT_SECONDS):
            raise HTTPException(503, "the index is busy with other writes; try again")
        try:
            with IndexWriter.open(self.folder) as writer:
                result = change(writer)
                manifest = writer.commit() if result is not False else None
            return result, manifest
        except BertdexError as error:  # locked 409, read-only or damaged 503, else 422: by type
            raise HTTPException(error.http_status, str(error)) from None
        finally:
            self.write_lock.release()

    def facets(self) -> dict[str, list[str]]:
        """The filterable stored fields, computed once per committed generation."""
        generation = self.searcher.manifest.generation
        if self._facets[0] != generation:
            with self._reader_lock:
                self._facets = (generation, answers.facets(self.reader))
        return self._facets[1]

    def filter_problem(self, filters: dict | None) -> str | None:
        """Why no entry can pass `filters` (search.filters.filter_problem), or None."""
        from search.filters import filter_problem

        with self._reader_lock:
            return filter_problem(self.reader, filters)

    def texts_of(self, keys: list[str]) -> dict[str, str]:
        with self._reader_lock:
            return answers.texts_of(self.reader, keys)

    def log(self, questions: list[str], mode: str, results: list[dict]) -> list[int | None]:
        """Queue each question with what it got for the query log; the ids link later feedback to it."""
        if self.logger is None:
            return [None] * len(questions)
        ids = []
        for question, result in zip(questions, results):
            shown = result["hits"] or ([result["closest"]] if result["closest"] else [])
            ids.append(self.logger.add(question, mode, [(h["key"], h["score"]) for h in shown], result["answered"]))
        return ids

    def add_feedback(self, question: str, key: str, verdict: str, **details) -> int:
        try:
            return self.store.add(question, key, verdict, **details)
        except sqlite3.OperationalError:  # an index write holds the file longer than the busy timeout
            raise HTTPException(503, "the index is busy with a long write; try the feedback again") from None

    def close(self) -> None:
        self.batcher.close()
        if self.logger is not None:
            self.logger.close()
        self.searcher.close()
        self.reader.close()
        if self.store is not None:
            self.store.close()

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
READ_ONLY = "this server is read-only (started without an API key, or with --read-only)"
NEEDS_KEY = "a valid API key is required (X-API-Key or Authorization: Bearer)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
                 max_batch: int, threads: int | None = None, *, feedback: bool = True, query_log: bool = True):
        self.folder = Path(folder)
        self.searcher = Searcher(self.folder, encoder=encoder, threads=threads)
        self.batcher = MicroBatcher(self.searcher, window=window, max_questions=max_batch)
        self.api_key = api_key
        self.writable = writable and api_key is not None
        self.write_lock = threading.Lock()
        if not (os.access(self.folder, os.W_OK) and os.access(self.folder / "bertdex.db", os.W_OK)):
            feedback = query_log = False  # a read-only folder: answers only (writes get 503 from the writer)
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

    def authorized(self, headers) -> bool:
        from search.server.guard import authorized

        return authorized(headers, self.api_key)

    def refusal(self, path: str, headers) -> tuple[int, str] | None:
        """(status, message) when a write to `path` must be refused, else None."""
        if path == "/feedback":
            if self.feedback_access == "off":
                return 403, "this server takes no feedback (started with --read-only)"
            return (401, NEEDS_KEY) if self.feedback_access == "key" and not self.authorized(headers) else None
        if not self.writable:
            return 403, READ_ONLY
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

"""The help-desk HTTP service: a FastAPI app over one index folder, and the page agents search from.

Reads go through one Searcher via the micro-batcher; writes take a lock, then IndexWriter's
all-or-nothing commit, while readers keep answering from the previous generation. Every error is
JSON `{"error": "one line", ...}` with a 4xx status. Request values reach SQLite only as bound
parameters, and no part of a request names a file: the page is read into memory at start.
"""

from __future__ import annotations

import asyncio
import os
import hmac
import ipaddress
import threading
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.ingest.build import upsert_entries
from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError
from indexer.store.keywords import normalize_text
from indexer.ingest.readers import Entry
from indexer.store.folder import IndexWriter
from search.server.batching import MicroBatcher
from search.server.guard import Guard, error_body, validation_message
from indexer.store.info import index_info
from search.searcher import Searcher, open_manifest

MAX_QUESTION_CHARS = 2_000
MAX_QUESTIONS = 32
MAX_K = 100
MAX_DOCUMENTS = 100
MAX_TEXT_CHARS = 20_000
MAX_KEY_CHARS = 256
MAX_FIELDS = 32
MAX_BODY_BYTES = 1_000_000
WRITE_WAIT_SECONDS = 30
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
PAGE_POLICY = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"

Question = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUESTION_CHARS)]
Key = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_KEY_CHARS,
                                       pattern=r"^[^\x00-\x1f\x7f]+$")]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS, pattern=r"^[^\x00]+$")]
Scalar = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | int | Annotated[float, Field(allow_inf_nan=False)] | bool | None


class SearchRequest(BaseModel):
    """One question or a list; the answers come back in the same order."""

    model_config = ConfigDict(extra="forbid")
    question: Question | Annotated[list[Question], Field(min_length=1, max_length=MAX_QUESTIONS)]
    k: int = Field(5, ge=1, le=MAX_K, description="Answers per question.")
    mode: Literal["dense", "keyword", "hybrid"] | None = Field(None, description="Default: the index's tuned mode.")
    min_score: Annotated[float, Field(allow_inf_nan=False)] | None = Field(None, description="Drop answers below it.")
    weight: float | None = Field(None, ge=0, le=1, description="Hybrid: the dense side's share.")
    filters: dict[FieldName, Scalar] = Field(default_factory=dict, max_length=16, description="Stored field -> value.")


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Key
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
    fields: dict[FieldName, Scalar] = Field(default_factory=dict, max_length=MAX_FIELDS)
    group: Key | None = None


class DocumentsRequest(BaseModel):
    """Entries to add, or to replace by key, in one commit."""

    model_config = ConfigDict(extra="forbid")
    documents: list[Document] = Field(min_length=1, max_length=MAX_DOCUMENTS)


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


class Service:
    """What the routes share: the searcher, its batcher, and the one write lock."""

    def __init__(self, folder: Path, api_key: str | None, writable: bool, encoder: Encoder | None, window: float,
                 max_batch: int, threads: int | None = None):
        self.folder = Path(folder)
        self.searcher = Searcher(self.folder, encoder=encoder, threads=threads)
        self.batcher = MicroBatcher(self.searcher, window=window, max_questions=max_batch)
        self.api_key = api_key
        self.writable = writable and api_key is not None
        self.write_lock = threading.Lock()
        static = resources.files("search.server") / "static"
        self.pages = {path: (static / name).read_bytes() for path, (name, _) in PAGES.items()}

    def authorized(self, headers) -> bool:
        given = headers.get("x-api-key") or ""
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            given = given or token.strip()
        return self.api_key is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    def write(self, change):
        """Run change(writer) under the write lock; commit unless it returns False."""
        if not self.write_lock.acquire(timeout=WRITE_WAIT_SECONDS):
            raise HTTPException(503, "the index is busy with other writes; try again")
        try:
            with IndexWriter.open(self.folder) as writer:
                result = change(writer)
                manifest = writer.commit() if result is not False else None
            return result, manifest
        except BertdexError as error:
            raise HTTPException(409 if "locked by pid" in str(error) else 422, str(error)) from None
        finally:
            self.write_lock.release()


def entries_from(request: DocumentsRequest) -> list[Entry]:
    """Checked entries, as indexer.ingest.readers makes them; a 422 names the first bad item."""
    entries, seen = [], {}
    for i, doc in enumerate(request.documents):
        text = normalize_text(doc.text)
        problem = ("the text is empty" if not text else "the text contains a NUL character" if "\x00" in text
                   else f"key {doc.key!r} repeats documents[{seen[doc.key]}]" if doc.key in seen else None)
        if problem:
            raise HTTPException(422, f"documents[{i}]: {problem}")
        seen[doc.key] = i
        entries.append(Entry(doc.key, text, dict(doc.fields), doc.group))
    return entries


def create_app(folder: str | Path, *, api_key: str | None = None, writable: bool = True,
               encoder: Encoder | None = None, batch_window: float = 0.002, max_batch: int = 64,
               max_body_bytes: int = MAX_BODY_BYTES, threads: int | None = None) -> FastAPI:
    """The app over index `folder`. Writes need `api_key` (and `writable`); without a key it only reads."""
    service = Service(Path(folder), api_key, writable, encoder, batch_window, max_batch, threads)

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.batcher.close()
        service.searcher.close()

    app = FastAPI(title="bertdex", version="0.1.0", lifespan=lifespan,
                  description="Semantic FAQ search: ranked answers by cosine similarity of BERT embeddings.")
    app.state.service = service
    app.add_middleware(Guard, service=service, max_body_bytes=max_body_bytes)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Or `Authorization: Bearer KEY`.")

    def writer_only(request: Request, _key: str | None = Depends(key_header)) -> None:
        if not service.writable:
            raise HTTPException(403, "this server is read-only (started without an API key, or with --read-only)")
        if not service.authorized(request.headers):
            raise HTTPException(401, "a valid API key is required (X-API-Key or Authorization: Bearer)")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
        return JSONResponse(error_body(error.status_code, str(error.detail)), error.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return JSONResponse(error_body(422, validation_message(error.errors())), 422)

    @app.exception_handler(BertdexError)
    async def refused(request: Request, error: BertdexError):
        return JSONResponse(error_body(422, str(error)), 422)

    @app.post("/search", summary="Answer one question or a list")
    async def search(body: SearchRequest) -> dict:
        questions = [body.question] if isinstance(body.question, str) else list(body.question)
        filters = {name: value for name, value in body.filters.items()}
        future = service.batcher.submit(questions, body.k, mode=body.mode, min_score=body.min_score,
                                        weight=body.weight, filters=filters or None)
        results = await asyncio.wrap_future(future)
        return {"results": [{"question": q, "answered": bool(hits), "hits": [h.to_dict() for h in hits]}
                            for q, hits in zip(questions, results)]}

    @app.get("/documents/{key:path}", summary="One stored entry")
    def get_document(key: str) -> dict:
        hit = service.searcher.get(key) if len(key) <= MAX_KEY_CHARS else None
        if hit is None:
            raise HTTPException(404, f"no entry with key {key[:MAX_KEY_CHARS]!r}")
        return {"key": hit.key, "text": hit.text, "fields": hit.fields, "group": hit.group,
                "variants": list(hit.variants)}

    @app.post("/documents", summary="Add or replace entries by key, in one commit",
              dependencies=[Depends(writer_only)])
    def post_documents(body: DocumentsRequest) -> dict:
        entries = entries_from(body)
        counts, manifest = service.write(lambda writer: upsert_entries(writer, service.searcher.encoder, entries))
        return {"added": counts["added"], "updated": counts["updated"], "unchanged": counts["unchanged"],
                "documents": manifest.documents, "generation": manifest.generation}

    @app.delete("/documents/{key:path}", summary="Remove one entry", dependencies=[Depends(writer_only)])
    def delete_document(key: str) -> dict:
        missing, manifest = service.write(lambda writer: False if writer.delete([key]) else True)
        if manifest is None:
            raise HTTPException(404, f"no entry with key {key[:MAX_KEY_CHARS]!r}")
        return {"deleted": key, "documents": manifest.documents, "generation": manifest.generation}

    @app.get("/health", summary="Liveness and the committed generation")
    def health() -> dict:
        manifest = open_manifest(service.folder)
        return {"status": "ok", "documents": manifest.documents, "generation": manifest.generation,
                "writable": service.writable}

    @app.get("/info", summary="The index's model, recipe, counts and the server's limits")
    def info() -> dict:
        details = {name: value for name, value in index_info(service.folder).items() if name != "folder"}
        details["server"] = {
            "writable": service.writable, "batching": service.batcher.stats(), "pid": os.getpid(),
            "limits": {"question_chars": MAX_QUESTION_CHARS, "questions": MAX_QUESTIONS, "k": MAX_K,
                       "documents": MAX_DOCUMENTS, "text_chars": MAX_TEXT_CHARS, "key_chars": MAX_KEY_CHARS,
                       "body_bytes": max_body_bytes},
        }
        return details

    for path, (_, media_type) in PAGES.items():
        app.add_api_route(path, _page(service, path, media_type), methods=["GET"], include_in_schema=False)
    return app


def _page(service: Service, path: str, media_type: str):
    def page() -> Response:
        return Response(service.pages[path], media_type=media_type,
                        headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})
    return page


def serve(folder: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          read_only: bool = False, batch_window: float = 0.002, max_batch: int = 64, threads: int | None = None,
          log_level: str = "warning", workers: int = 1) -> None:
    """Run the service with uvicorn until interrupted. `workers` > 1: that many processes on one port,
    each with its own searcher over the same folder (a compressed index's mapped vectors are shared
    through the page cache), read-only (one writer per folder), `threads` each (default: cores / workers)."""
    import uvicorn

    writable = check_bind(host, api_key, read_only or workers > 1)
    options = {"host": host, "port": port, "log_level": log_level, "server_header": False,
               "limit_concurrency": 512, "timeout_keep_alive": 5}
    if workers > 1:
        import json
        import os

        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        os.environ[WORKER_OPTIONS] = json.dumps({"folder": str(folder), "batch_window": batch_window,
                                                 "max_batch": max_batch, "threads": threads})
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, **options)
        return
    app = create_app(folder, api_key=api_key, writable=writable, batch_window=batch_window, max_batch=max_batch,
                     threads=threads)
    uvicorn.run(app, **options)


# serve(workers=N) -> its uvicorn worker processes. They are spawned (not forked) and uvicorn hands
# them only an import string, so the environment is the one channel; serve() writes it, no user does.
WORKER_OPTIONS = "BERTDEX_SERVE_WORKER_OPTIONS"


def worker_app() -> FastAPI:
    """The app of one worker process of `serve(workers=N)`: read-only, options from serve()."""
    import json
    import os

    options = json.loads(os.environ[WORKER_OPTIONS])
    return create_app(options.pop("folder"), api_key=None, writable=False, **options)

"""The help-desk HTTP service: a FastAPI app over one index folder, and the page agents search from.

Reads go through one Searcher via the micro-batcher; writes take a lock, then IndexWriter's
all-or-nothing commit, while readers keep answering from the previous generation. Agents'
feedback and the query log go to the index's SQLite file (indexer.store.feedback), never to the
vectors. Every error is JSON `{"error": "one line", ...}` with a 4xx status. Request values reach
SQLite only as bound parameters, and no part of a request names a file: the page and the /docs
assets are read into memory at start.
"""

from __future__ import annotations

import asyncio
import threading
import os
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError, IndexDamaged
from indexer.ingest.build import upsert_entries
from indexer.ingest.entries import check_question, field_problem, key_problem, text_problem
from indexer.ingest.readers import Entry
from indexer.store.info import index_info
from search.answer import answer as shared_answer
from search.searcher import open_manifest
from search.server import answers
from search.server.guard import AccessLog, Guard, error_body, validation_message
from search.server.metrics import Metrics, MetricsMiddleware
from search.server.requests import (MAX_DOCUMENTS, MAX_K, MAX_KEY_CHARS, MAX_QUESTION_CHARS, MAX_QUESTIONS,
                                    MAX_TEXT_CHARS, DocumentsRequest, FeedbackRequest, SearchRequest)
from search.server.service import DOCS_ASSETS, PAGES, Service, bind_socket, check_bind  # noqa: F401 (re-exported)

MAX_BODY_BYTES = 1_000_000
PAGE_POLICY = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


def entries_from(request: DocumentsRequest) -> list[Entry]:
    """Checked entries, as indexer.ingest.readers makes them; a 422 names the first bad item."""
    entries, seen = [], {}
    for i, doc in enumerate(request.documents):
        text, problem = text_problem(doc.text, MAX_TEXT_CHARS)
        problem = key_problem(doc.key) or problem or next(
            (found for name, value in [*doc.fields.items(), *([("group", doc.group)] if doc.group else [])]
             if (found := field_problem(name, value, MAX_TEXT_CHARS))), None)
        if problem is None and doc.key in seen:
            problem = f"key {doc.key!r} repeats documents[{seen[doc.key]}]"
        if problem:
            raise HTTPException(422, f"documents[{i}]: {problem}")
        seen[doc.key] = i
        entries.append(Entry(doc.key, text, dict(doc.fields), doc.group))
    return entries


def answer(service: Service, question: str, hits, cut: float | None, source: str | None, mode: str, detail: bool,
           filters: dict | None = None) -> dict:
    """One question's result (search.answer): the hits past the cut, each with its band; with none, the closest
    miss and why. `detail` adds each hit's matched words and its group's other texts."""
    problem = service.filter_problem(filters) if filters and not hits else None
    made = shared_answer(question, hits, cut=cut, cut_source=source, mode=mode, filtered=bool(filters),
                         filter_problem=problem)
    result = made.to_dict()
    if detail:
        for hit, shown in zip([*made.hits, made.closest], [*result["hits"], result["closest"]]):
            if hit is None:
                continue
            shown["highlights"] = answers.highlights(question, hit.text, hit.fields)
            others = [key for key in hit.variants if key != hit.key]
            texts = service.texts_of(others) if others else {}
            shown["variant_texts"] = [{"key": key, "text": texts[key]} for key in others if key in texts]
    return result


def create_app(folder: str | Path, *, api_key: str | None = None, writable: bool = True,
               encoder: Encoder | None = None, batch_window: float = 0.002, max_batch: int = 64,
               max_body_bytes: int = MAX_BODY_BYTES, threads: int | None = None, feedback: bool = True,
               query_log: bool = True, access_log: bool | str = False, read_only_reason: str | None = None,
               host: str = "127.0.0.1", metrics_dir: str | Path | None = None) -> FastAPI:
    """The app over index `folder`. Writes need `api_key` (and `writable`); without a key it only reads.

    `feedback`: take verdicts at POST /feedback (with the key, if there is one); `query_log`: log each
    question in the index; `access_log`: one line per request on the `bertdex.access` logger ("json":
    one JSON object per line). `read_only_reason`: what refusals say when `writable` is False; `host`:
    the bound address (a keyless server on loopback answers only requests whose Host header is a
    loopback name). `metrics_dir`: the folder of metric files the workers of one server share
    (search.server.metrics), None for one process.
    """
    service = Service(Path(folder), api_key, writable, encoder, batch_window, max_batch, threads,
                      feedback=feedback, query_log=query_log, read_only_reason=read_only_reason, host=host)

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="bertdex", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Semantic FAQ search: ranked answers by cosine similarity of BERT embeddings.")
    app.state.service = service
    metrics = Metrics(Path(folder), metrics_dir)
    app.add_middleware(Guard, service=service, max_body_bytes=max_body_bytes)
    if access_log:
        app.add_middleware(AccessLog, as_json=access_log == "json")
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Or `Authorization: Bearer KEY`.")

    def allowed(request: Request, _key: str | None = Depends(key_header)) -> None:
        refused = service.refusal(request.url.path, request.headers)
        if refused:
            raise HTTPException(*refused)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
        return JSONResponse(error_body(error.status_code, str(error.detail)), error.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return JSONResponse(error_body(422, validation_message(error.errors())), 422)

    @app.exception_handler(BertdexError)
    async def refused(request: Request, error: BertdexError):
        return JSONResponse(error_body(error.http_status, str(error)), error.http_status)

    @app.exception_handler(sqlite3.DatabaseError)
    async def damaged(request: Request, error: sqlite3.DatabaseError):
        message = str(IndexDamaged(f"{service.folder}/bertdex.db: {error}"))
        return JSONResponse(error_body(IndexDamaged.http_status, message), IndexDamaged.http_status)

    @app.post("/search", summary="Answer one question or a list")
    async def search(body: SearchRequest) -> dict:
        questions = [body.question] if isinstance(body.question, str) else list(body.question)
        mode = body.mode or service.searcher.manifest.settings.search.mode
        no_cut = "min_score" in body.model_fields_set and body.min_score is None
        cut = None if no_cut else service.searcher.cut_for(mode, body.min_score)
        future = service.batcher.submit(questions, body.k, mode=mode, min_score=float("-inf"), weight=body.weight,
                                        filters=dict(body.filters) or None)
        found = await asyncio.wrap_future(future)
        source = answers.cut_source(service.searcher.manifest.settings.search, body.min_score, cut)
        filters = dict(body.filters) or None
        results = [answer(service, q, hits, cut, source, mode, body.highlight, filters) for q, hits in zip(questions, found)]
        for result, query_id in zip(results, service.log(questions, mode, results)):
            result["query_id"] = query_id
        metrics.questions([result["answered"] for result in results])
        return {"results": results}

    @app.get("/metrics", summary="Prometheus metrics: requests, latency, answered questions, the index's generation and size")
    def metrics_page() -> Response:
        body, media_type = metrics.exposition()
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/fields", summary="Stored fields whose values repeat (such as category), with their values: filters")
    def fields() -> dict:
        return {"fields": service.facets()}

    @app.post("/feedback", summary="An agent's verdict on one answer: up, down, or right (a lower answer was right)",
              dependencies=[Depends(allowed)])
    async def feedback(body: FeedbackRequest, request: Request) -> dict:
        check_question(body.question)  # as a search's question: no NUL, not empty, valid Unicode
        given = await asyncio.to_thread(service.add_feedback, body.question, body.key, body.verdict, rank=body.rank,
                                        score=body.score, query_id=body.query_id,
                                        client=request.client.host if request.client else None)
        return {"id": given, "question": body.question, "key": body.key, "verdict": body.verdict}

    @app.get("/documents/{key:path}", summary="One stored entry")
    def get_document(key: str) -> dict:
        hit = service.searcher.get(key) if len(key) <= MAX_KEY_CHARS else None
        if hit is None:
            raise HTTPException(404, f"no entry with key {key[:MAX_KEY_CHARS]!r}")
        return {"key": hit.key, "text": hit.text, "fields": hit.fields, "group": hit.group,
                "variants": list(hit.variants)}

    @app.post("/documents", summary="Add or replace entries by key, in one commit", dependencies=[Depends(allowed)])
    def post_documents(body: DocumentsRequest) -> dict:
        entries = entries_from(body)
        counts, manifest = service.write(lambda writer: upsert_entries(
            writer, service.searcher.encoder_for_recipe(writer.manifest.recipe), entries))
        return {"added": counts["added"], "updated": counts["updated"], "unchanged": counts["unchanged"],
                "documents": manifest.documents, "generation": manifest.generation}

    @app.delete("/documents/{key:path}", summary="Remove one entry", dependencies=[Depends(allowed)])
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
            "writable": service.writable, "feedback": service.feedback_access, "query_log": service.query_log,
            "batching": service.batcher.stats(), "pid": os.getpid(),
            "limits": {"question_chars": MAX_QUESTION_CHARS, "questions": MAX_QUESTIONS, "k": MAX_K,
                       "documents": MAX_DOCUMENTS, "text_chars": MAX_TEXT_CHARS, "key_chars": MAX_KEY_CHARS,
                       "body_bytes": max_body_bytes},
        }
        return details

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="bertdex API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png")

    for name, media_type in DOCS_ASSETS.items():
        app.add_api_route(f"/docs/assets/{name}", _static(service.docs_assets[name], media_type), methods=["GET"],
                          include_in_schema=False)
    for path, (_, media_type) in PAGES.items():
        app.add_api_route(path, _static(service.pages[path], media_type, PAGE_POLICY), methods=["GET"],
                          include_in_schema=False)
    return app


def _static(content: bytes, media_type: str, policy: str | None = None):
    headers = {"Cache-Control": "no-cache", **({"Content-Security-Policy": policy} if policy else {})}

    def page() -> Response:
        return Response(content, media_type=media_type, headers=headers)
    return page


def serve(folder: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          read_only: bool = False, batch_window: float = 0.002, max_batch: int = 64, threads: int | None = None,
          query_log: bool = True, access_log: bool | str = True, sock=None, log_level: str = "warning",
          workers: int = 1, ready=None) -> None:
    """Run the service with uvicorn until interrupted, on `sock` (from bind_socket) or a fresh one.

    `ready()` is called once the index, the encoder and a first question's path are loaded, just before
    requests are taken (with `workers` > 1: before the workers start), so a start line printed there is true.

    `workers` > 1: that many processes on one port, each with its own searcher over the same folder (a
    compressed index's mapped vectors are shared through the page cache), read-only (one writer per
    folder), `threads` each (default: cores / workers)."""
    import uvicorn

    writable = check_bind(host, api_key, read_only or workers > 1)
    if workers > 1:
        import json
        import tempfile

        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        # the workers' metric files: one folder per server, gone when it stops (prometheus_client reads
        # PROMETHEUS_MULTIPROC_DIR when a worker imports it)
        with tempfile.TemporaryDirectory(prefix="bertdex-metrics-") as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            os.environ[WORKER_OPTIONS] = json.dumps({"folder": str(folder), "batch_window": batch_window,
                                                     "max_batch": max_batch, "threads": threads,
                                                     "access_log": access_log, "host": host,
                                                     "metrics_dir": metrics_dir})
            if ready is not None:
                ready()
            uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=host, port=port,
                        log_level=log_level, server_header=False, limit_concurrency=512, timeout_keep_alive=5,
                        access_log=False)
        return
    sock = sock or bind_socket(host, port)
    app = create_app(folder, api_key=api_key, writable=writable, batch_window=batch_window, max_batch=max_batch,
                     threads=threads, feedback=not read_only, query_log=query_log and not read_only,
                     access_log=access_log, read_only_reason="started with --read-only" if read_only else None,
                     host=host)
    app.state.service.searcher.warm_up()  # the first question's one-off costs (arena, threads, Kiwi), paid here
    # long questions' widths once it answers (OpenVINO: ~0.4 s of forward passes, taking turns with questions)
    threading.Thread(target=app.state.service.searcher.warm_up_long, name="bertdex-warm-long", daemon=True).start()
    config = uvicorn.Config(app, log_level=log_level, server_header=False, limit_concurrency=512,
                            timeout_keep_alive=5, access_log=False)
    if ready is not None:
        ready()
    uvicorn.Server(config).run(sockets=[sock])


# serve(workers=N) -> its uvicorn worker processes. They are spawned (not forked) and uvicorn hands
# them only an import string, so the environment is the one channel; serve() writes it, no user does.
WORKER_OPTIONS = "BERTDEX_SERVE_WORKER_OPTIONS"


def worker_app() -> FastAPI:
    """The app of one worker process of `serve(workers=N)`: read-only, no feedback, options from serve()."""
    import json

    options = json.loads(os.environ[WORKER_OPTIONS])
    if options.get("access_log"):  # a spawned process: the handler `bertdex serve` set up is not here
        access_log_to_stderr(options["access_log"] == "json")
    return create_app(options.pop("folder"), api_key=None, writable=False, feedback=False, query_log=False,
                      read_only_reason="serving with several --workers: one writer per folder, so none of them writes",
                      **options)


def access_log_to_stderr(as_json: bool) -> None:
    """Send the `bertdex.access` lines to stderr: as they are (JSON), or after the time (text)."""
    import logging
    import sys

    logger = logging.getLogger("bertdex.access")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if as_json else "%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

"""GET /metrics in the Prometheus text format, made by the official client library (prometheus_client).

Counted per request: `bertdex_requests_total{method, route, status}` and the latency histogram
`bertdex_request_seconds{route}`; per question: `bertdex_questions_total{answered="yes"|"no"}`
(the answered share is their ratio); read at each scrape: the index's generation, entries,
vectors and bytes on disk. Routes are the app's templates (`/documents/{key}`), never raw paths,
so a client cannot grow the number of series.

With `serve --workers N` the N processes share one folder of metric files (prometheus_client's
multiprocess mode, `metrics_dir`), so any worker's /metrics answers for all of them. This module
does not route, and it reads no environment variable itself (the client library reads
PROMETHEUS_MULTIPROC_DIR, which `serve` sets for its workers).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from search.server.guard import TimedRequests

ROUTES = ("/search", "/fields", "/feedback", "/documents", "/health", "/info", "/metrics", "/docs", "/openapi.json",
          "/", "/app.js", "/style.css")
# seconds: a question takes ~5-50 ms on a CPU; a write embeds, so it can take seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def route_of(path: str) -> str:
    """The route template a path belongs to: route_of("/documents/en-001") -> "/documents/{key}"."""
    if path in ROUTES:
        return path
    if path.startswith("/documents/"):
        return "/documents/{key}"
    if path.startswith("/docs/assets/"):
        return "/docs/assets"
    return "other"


class IndexCollector:
    """The index's generation, entries, vectors and size on disk, read from the folder at each scrape."""

    def __init__(self, folder: Path):
        self.folder = folder

    def collect(self):
        from indexer.store.manifest import open_manifest

        manifest = open_manifest(self.folder)
        size = sum(path.stat().st_size for path in self.folder.iterdir() if path.is_file())
        for name, value, about in (
                ("bertdex_index_generation", manifest.generation, "The committed generation of the index."),
                ("bertdex_index_documents", manifest.documents, "Entries in the index."),
                ("bertdex_index_vectors", manifest.vectors, "Vectors in the index (entries and their windows)."),
                ("bertdex_index_bytes", size, "Bytes of the index folder's files on disk.")):
            yield GaugeMetricFamily(name, about, value=value)


class Metrics:
    """The service's metrics: Metrics(folder).observe("POST", "/search", 200, 0.012); .questions([True, False])."""

    def __init__(self, folder: Path, metrics_dir: str | Path | None = None):
        self.metrics_dir = metrics_dir
        # multiprocess: the values live in files; each scrape gathers them with a MultiProcessCollector
        own = None if metrics_dir else CollectorRegistry()
        self.requests = Counter("bertdex_requests", "HTTP requests answered.", ["method", "route", "status"],
                                registry=own)
        self.latency = Histogram("bertdex_request_seconds", "Seconds from a request's arrival to its answer.",
                                 ["route"], buckets=BUCKETS, registry=own)
        self.asked = Counter("bertdex_questions", "Questions asked at POST /search, by whether one answer passed "
                                                  "the cut.", ["answered"], registry=own)
        self.registry = own
        self.index = IndexCollector(Path(folder))
        if own is not None:
            own.register(self.index)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def questions(self, answered: list[bool]) -> None:
        for was in answered:
            self.asked.labels("yes" if was else "no").inc()

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of one scrape."""
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
        registry.register(self.index)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsMiddleware(TimedRequests):
    """Each HTTP request's method, route, status and seconds into `metrics`."""

    def __init__(self, app, metrics: Metrics):
        super().__init__(app)
        self.metrics = metrics

    def done(self, scope, status: int, seconds: float) -> None:
        self.metrics.observe(scope["method"], scope["path"], status, seconds)

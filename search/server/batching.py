"""Micro-batching: questions that arrive within a few milliseconds share one forward pass.

One worker thread takes the first waiting request, gathers whatever else arrives within
`window` seconds (or is already queued, up to `max_questions`), embeds all their questions in
one call, then ranks each request with its own k, mode and filters. A lone question waits at
most `window`; under load, requests that queue while a pass runs join the next one. This module
does not validate requests (the server does) and knows nothing of HTTP.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from search.searcher import Hit, Searcher


@dataclass(frozen=True)
class _Request:
    questions: list[str]
    k: int
    options: dict
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """MicroBatcher(searcher).search(["how do I reset my password?"], 5) -> [[Hit, ...]]

    Thread-safe: call `submit` from any thread (or `await asyncio.wrap_future(...)` on its result).
    """

    def __init__(self, searcher: Searcher, *, window: float = 0.002, max_questions: int = 64):
        self.searcher, self.window, self.max_questions = searcher, window, max_questions
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._counts = {"batches": 0, "requests": 0, "questions": 0, "largest": 0}
        self._counts_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bertdex-batcher", daemon=True)
        self._thread.start()

    def submit(self, questions: list[str], k: int, **options) -> Future:
        """A Future of one list of hits per question; options as for Searcher.search_many."""
        request = _Request(list(questions), k, options)
        if not self._thread.is_alive():
            request.future.set_exception(RuntimeError("the batcher is closed"))
        else:
            self._queue.put(request)
        return request.future

    def search(self, questions: list[str], k: int, **options) -> list[list[Hit]]:
        return self.submit(questions, k, **options).result()

    def stats(self) -> dict:
        """How many forward passes served how many requests: {"batches": 3, "requests": 10, ...}."""
        with self._counts_lock:
            return dict(self._counts)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # -- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._answer(batch)
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """The first request and those arriving within the window; True when closing."""
        batch, size = [first], len(first.questions)
        deadline = time.monotonic() + self.window
        while size < self.max_questions:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            size += len(item.questions)
        return batch, False

    def _answer(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        dense = [r for r in live if r.options.get("mode") != "keyword"]
        try:
            questions = [q for r in dense for q in r.questions]
            recipe, vectors = self.searcher.embed_questions(questions) if questions else (None, None)
        except Exception as error:  # the model failed: every request of the pass hears why
            for request in live:
                request.future.set_exception(error)
            return
        offsets, start = {}, 0
        for request in dense:
            offsets[id(request)] = start
            start += len(request.questions)
        for request in live:
            try:
                given = None
                if id(request) in offsets:
                    at = offsets[id(request)]
                    given = vectors[at : at + len(request.questions)]
                request.future.set_result(self.searcher.search_many(request.questions, request.k, vectors=given,
                                                                   recipe=recipe, **request.options))
            except Exception as error:  # a BertdexError (e.g. an empty question) belongs to its request only
                request.future.set_exception(error)
        with self._counts_lock:
            self._counts["batches"] += 1
            self._counts["requests"] += len(live)
            self._counts["questions"] += sum(len(r.questions) for r in live)
            self._counts["largest"] = max(self._counts["largest"], len(live))

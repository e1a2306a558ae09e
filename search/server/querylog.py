"""The server's query log writer: asked questions go to the index's `query_log` table from a background thread.

A search never waits for SQLite: an index write holds the file's write lock for as long as it
embeds, so rows wait here (at most `max_pending`, the oldest dropped first) and are written in
batches once the lock is free. Storage itself is indexer.store.feedback; this module only queues.
"""

from __future__ import annotations

import queue
import sqlite3
import threading

from indexer.store.feedback import FeedbackStore, new_query_id

RETRY_SECONDS = 1.0


class QueryLog:
    """QueryLog(store).add("how do I pay?", "dense", [("en-010", 0.71)], True) -> query id (written soon after)."""

    def __init__(self, store: FeedbackStore, max_pending: int = 10_000):
        self.store, self.max_pending = store, max_pending
        self.queue: queue.Queue = queue.Queue()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="bertdex-query-log", daemon=True)
        self._thread.start()

    def add(self, question: str, mode: str | None, hits: list[tuple[str, float]], answered: bool) -> int:
        query_id = new_query_id()
        self.queue.put((query_id, question, mode, hits, answered))
        return query_id

    def _run(self) -> None:
        pending: list = []
        closing = False
        while True:
            try:
                pending.append(self.queue.get(timeout=RETRY_SECONDS if pending else None))
                while True:
                    pending.append(self.queue.get_nowait())
            except queue.Empty:
                pass
            if None in pending:
                closing, pending = True, [row for row in pending if row is not None]
            if len(pending) > self.max_pending:
                self.dropped += len(pending) - self.max_pending
                pending = pending[-self.max_pending:]
            if pending:
                try:
                    self.store.log_queries(pending)
                    pending = []
                except sqlite3.OperationalError:  # the index is being written: keep the rows, try again
                    if closing:
                        return
            if closing:
                return

    def close(self, timeout: float = 30) -> None:
        """Write what is queued (as long as `timeout` allows), then stop."""
        self.queue.put(None)
        self._thread.join(timeout=timeout)

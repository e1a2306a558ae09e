"""Agents' verdicts on answers and the log of asked questions, kept in the index's own SQLite file.

Two tables (migration m002 in indexer.store.folder): `query_log` (time, question, mode, the
answers' keys and scores, whether any passed the cut), trimmed to the newest `max_logged` rows at
every write; and `feedback` (one verdict on one answer to one question: "up", "down", or "right"
for a lower answer that should have come first). Each write is one transaction on this store's
own connection. The documents, vectors and manifest are never touched: no generation is
committed, so searchers keep their loaded vectors. This module stores and reads; it neither
clusters nor tunes (see search.quality.feedback).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import BertdexError
from indexer.store.folder import check_index_folder, connect, now, schema

VERDICTS = ("up", "down", "right")
MAX_LOGGED = 10_000
MAX_VERDICTS = 20_000    # the table stops here: a new verdict is refused (old ones are what adaptation learns from)
MAX_PER_CLIENT = 500     # verdicts one client (address) may give
_last_id = [0]
_id_lock = threading.Lock()


def new_query_id() -> int:
    """A query log id: microseconds since the epoch, strictly increasing in this process (so ids sort by time
    and several server processes on one index rarely meet; a clash drops that one log row)."""
    with _id_lock:
        _last_id[0] = max(_last_id[0] + 1, time.time_ns() // 1000)
        return _last_id[0]


@dataclass(frozen=True)
class LoggedQuery:
    """One question asked of the server, with the answers it got (key, score), best first."""

    id: int
    asked: str
    question: str
    mode: str | None
    answered: bool
    hits: tuple[tuple[str, float], ...]


class FeedbackRefused(BertdexError):
    """A verdict over a bound: too many from this client, or the table is full."""

    http_status = 429


@dataclass(frozen=True)
class Verdict:
    """An agent's verdict on the answer `key` to `question`."""

    id: int
    given: str
    question: str
    key: str
    verdict: str
    rank: int | None = None
    score: float | None = None
    query_id: int | None = None
    client: str | None = None  # who gave it (the server's view of the address); None from older rows and the library


class FeedbackStore:
    """FeedbackStore(folder).add("how do I pay?", "en-010", "up") -> 1; .verdicts(); .logged().

    `readonly`: only read (no tables are created; an index that never took feedback reads as empty).
    """

    def __init__(self, folder: str | Path, *, readonly: bool = False, max_logged: int = MAX_LOGGED,
                 max_verdicts: int | None = None, max_per_client: int | None = None):
        self.folder = check_index_folder(Path(folder))
        self.max_logged = max_logged
        self.max_verdicts = MAX_VERDICTS if max_verdicts is None else max_verdicts
        self.max_per_client = MAX_PER_CLIENT if max_per_client is None else max_per_client
        self.db = connect(self.folder, readonly=readonly)
        self._lock = threading.Lock()
        if not readonly:
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a log row costs no fsync
            if schema().pending(self.db):  # a write: only when needed (an index write may hold the lock)
                with self._lock, self.db.atomic():
                    schema().apply(self.db)
        self._ready = "feedback" in self.db.table_names()

    def log_queries(self, rows: list[tuple[int, str, str | None, list, bool]]) -> None:
        """Append asked questions as (id from new_query_id, question, mode, [(key, score)], answered), in one
        transaction; then drop the oldest rows beyond `max_logged`."""
        records = [{"id": query_id, "asked": now(), "question": question, "mode": mode, "answered": int(answered),
                    "hits": json.dumps([[key, round(float(score), 6)] for key, score in hits], ensure_ascii=False)}
                   for query_id, question, mode, hits, answered in rows]
        with self._lock, self.db.atomic():
            self.db["query_log"].insert_all(records, ignore=True)
            self.db.execute("DELETE FROM query_log WHERE id < (SELECT id FROM query_log ORDER BY id DESC LIMIT 1 OFFSET ?)",
                            [self.max_logged - 1])

    def log_query(self, question: str, mode: str | None, hits: list[tuple[str, float]], answered: bool) -> int:
        """Append one asked question; returns its id."""
        query_id = new_query_id()
        self.log_queries([(query_id, question, mode, hits, answered)])
        return query_id

    def add(self, question: str, key: str, verdict: str, *, rank: int | None = None, score: float | None = None,
            query_id: int | None = None, client: str | None = None) -> int:
        """Store one verdict on an existing entry; BertdexError names the bad field. Returns its id.

        FeedbackRefused when the table holds `max_verdicts`, or `client` has given `max_per_client`."""
        if verdict not in VERDICTS:
            raise BertdexError(f"verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not question.strip():
            raise BertdexError("question: empty")
        with self._lock, self.db.atomic():
            if self.db.execute("SELECT 1 FROM documents WHERE key = ?", [key]).fetchone() is None:
                raise BertdexError(f"key: no entry with key {key!r}")
            if self.db.execute("SELECT count(*) FROM feedback").fetchone()[0] >= self.max_verdicts:
                raise FeedbackRefused(f"the feedback table is full ({self.max_verdicts} verdicts): no more are taken")
            if client is not None and self.db.execute("SELECT count(*) FROM feedback WHERE client = ?",
                                                      [client]).fetchone()[0] >= self.max_per_client:
                raise FeedbackRefused(f"this client has given {self.max_per_client} verdicts, the most one client may give")
            row = {"given": now(), "question": question, "key": key, "verdict": verdict, "rank": rank,
                   "score": score, "query_id": query_id, "client": client}
            return self.db["feedback"].insert(row).last_pk

    def verdicts(self) -> list[Verdict]:
        if not self._ready:
            return []
        names = [row[1] for row in self.db.execute("PRAGMA table_info(feedback)")]  # also on a ReadOnlyDatabase
        columns = "client" if "client" in names else "NULL"
        rows = self.db.execute("SELECT id, given, question, key, verdict, rank, score, query_id, "
                               f"{columns} FROM feedback ORDER BY id")
        return [Verdict(*row) for row in rows]

    def logged(self) -> list[LoggedQuery]:
        if not self._ready:
            return []
        rows = self.db.execute("SELECT id, asked, question, mode, answered, hits FROM query_log ORDER BY id")
        return [LoggedQuery(i, asked, question, mode, bool(answered), tuple((k, s) for k, s in json.loads(hits or "[]")))
                for i, asked, question, mode, answered, hits in rows]

    def close(self) -> None:
        self.db.close()

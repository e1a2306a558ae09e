"""Open an index and answer questions: embed -> FAISS top-k -> join texts, one row per document.

A Searcher loads the model and the vectors once; each search reads SQLite inside one read
transaction and first checks the committed generation, so a search during a write sees the old
or the new index, never a mix. Keyword and hybrid ranking live in `search.keyword`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError
from indexer.store.keywords import normalize_text
from indexer.embed.recipe import absolute_layer, check_pooling
from indexer.embed.resolve import encoder_for
from indexer.store import ann
from indexer.store.ann_compressed import load_flag
from indexer.store.folder import Manifest, check_index_folder, connect, load_vectors, read_manifest
from search import keyword

MODES = ("dense", "keyword", "hybrid")
MAX_K = 1000


@dataclass(frozen=True)
class Hit:
    """One answer: the entry's key, cosine score (or fused/BM25 score), texts and stored fields."""

    rank: int
    key: str
    score: float
    text: str
    fields: dict = field(default_factory=dict)
    group: str | None = None
    span: tuple[int, int] | None = None  # the matching window of a long text, as characters
    variants: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = {"rank": self.rank, "key": self.key, "score": round(self.score, 6), "text": self.text,
                "fields": self.fields}
        if self.group is not None:
            data["group"], data["variants"] = self.group, list(self.variants)
        if self.span is not None:
            data["span"] = list(self.span)
        return data


class Searcher:
    """Searcher("faq-index").search("how do I reset my password?", k=5) -> [Hit, ...]

    `model`, `layer`, `pooling`: when given, must match the index's recipe (else BertdexError).
    """

    def __init__(self, folder: str | Path, *, model: str | None = None, layer: int | None = None,
                 pooling: str | None = None, precision: str = "auto", threads: int | None = None,
                 backend: str = "auto", encoder: Encoder | None = None):
        self.folder = check_index_folder(Path(folder))
        self.db = connect(self.folder, readonly=True)
        self.manifest = read_manifest(self.db, self.folder)
        self.encoder = encoder or encoder_for(self.manifest.recipe, model=model, precision=precision,
                                                  threads=threads, backend=backend)
        self._check_asked(layer, pooling)
        self._lock = threading.RLock()
        self._generation = -1
        self.vectors = None
        with self._snapshot():
            pass

    def _check_asked(self, layer: int | None, pooling: str | None) -> None:
        recipe = self.manifest.recipe
        if pooling is not None and check_pooling(pooling) != recipe.pooling:
            raise BertdexError(f"--pooling {pooling} differs from the index's recipe ({recipe.pooling}); rebuild to change it")
        if layer is not None and absolute_layer(layer, self.encoder.num_layers) != recipe.layer:
            raise BertdexError(f"--layer {layer} differs from the index's recipe (hidden state {recipe.layer}); rebuild to change it")

    # -- consistency ----------------------------------------------------------------------------

    def _snapshot(self):
        return _Snapshot(self)

    def _refresh(self) -> None:
        """Inside a read transaction: load the FAISS file of the committed generation if it changed."""
        row = self.db.execute("SELECT value FROM manifest WHERE name = 'generation'").fetchone()
        if row is not None and self.vectors is not None and int(row[0]) == self._generation:
            return  # every change commits a new generation: nothing to reload, no per-question parsing
        self.manifest = read_manifest(self.db, self.folder)
        if self.manifest.generation != self._generation:
            self.vectors = load_vectors(self.folder, self.manifest.generation, self.manifest.recipe.dimension,
                                        load_flag(self.manifest.index_type))
            self._generation = self.manifest.generation

    # -- searching ------------------------------------------------------------------------------

    def embed(self, questions: list[str]) -> np.ndarray:
        recipe = self.manifest.recipe
        texts = [normalize_text(q) for q in questions]
        return self.encoder.embed(texts, layer=recipe.layer, pooling=recipe.pooling,
                                  exclude_special=recipe.exclude_special).vectors

    def search(self, question: str, k: int = 5, **options) -> list[Hit]:
        return self.search_many([question], k, **options)[0]

    def search_many(self, questions: list[str], k: int = 5, *, mode: str | None = None,
                    min_score: float | None = None, weight: float | None = None,
                    filters: dict | None = None, vectors: np.ndarray | None = None) -> list[list[Hit]]:
        """Ranked hits per question; questions are embedded in one batch.

        `mode`: dense, keyword or hybrid (default: the index's tuned mode, else dense).
        `min_score`: hits below it are dropped (an empty list means "no good answer").
        `filters`: stored field -> required value.
        `vectors`: the questions' vectors from `embed`, when already computed (the server's micro-batcher).
        """
        tuned = self.manifest.settings.get("search", {})
        mode = mode or tuned.get("mode", "dense")
        if mode not in MODES:
            raise BertdexError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if not 1 <= k <= MAX_K:
            raise BertdexError(f"k must be between 1 and {MAX_K}, not {k}")
        for question in questions:
            if not normalize_text(question):
                raise BertdexError("empty question")
        weight = tuned.get("weight", 0.5) if weight is None else weight
        # a calibrated cut is on the score scale of the mode it was calibrated for
        if min_score is None and mode == tuned.get("mode", "dense"):
            min_score = tuned.get("min_score")
        if mode == "keyword":
            vectors = None
        elif vectors is None:
            vectors = self.embed(questions)
        results = []
        with self._snapshot():
            for i, question in enumerate(questions):
                ranked = self._rank(question, None if vectors is None else vectors[i], k, mode, weight, filters)
                results.append(self._hits(ranked, k, min_score))
        return results

    def _rank(self, question, vector, k, mode, weight, filters) -> list[tuple[int, float, int | None]]:
        """(document id, score, passage id) best first, one per document or group, filtered."""
        want = k
        while True:
            pool_size = min(max(4 * want + 10, 50), MAX_K * 10)
            dense = self._dense(vector, pool_size) if mode != "keyword" else []
            words = keyword.search(self.db, question, pool_size) if mode != "dense" else []
            if mode == "dense":
                ranked = dense
            elif mode == "keyword":
                ranked = words
            else:
                ranked = keyword.fuse(dense, words, weight, self.manifest.settings.get("search", {}).get("fusion", "score"))
            kept = self._collapse(ranked, filters)
            exhausted = len(dense) < pool_size and len(words) < pool_size
            if len(kept) >= k or exhausted or pool_size >= MAX_K * 10:
                return kept[:k]
            want *= 4

    def _dense(self, vector: np.ndarray, n: int) -> list[tuple[int, float, int]]:
        if self.vectors.ntotal == 0:
            return []
        scores, ids = ann.search(self.vectors, vector[None, :], min(n, self.vectors.ntotal))
        passages = [int(i) for i in ids[0] if i >= 0]
        owners = _passage_owners(self.db, passages)
        return [(owners[p], float(s), p) for s, p in zip(scores[0], passages) if p in owners]

    def _collapse(self, ranked, filters) -> list[tuple[int, float, int | None]]:
        """Best row per document, then per group; drop rows that fail the filters."""
        seen_docs, seen_groups, kept = set(), set(), []
        rows = _document_groups(self.db, list(dict.fromkeys(doc for doc, _, _ in ranked)), bool(filters))
        for doc, score, passage in ranked:
            if doc in seen_docs or doc not in rows:
                continue
            seen_docs.add(doc)
            group, fields = rows[doc]
            if filters and any(str(fields.get(name)) != str(value) for name, value in filters.items()):
                continue
            if group is not None:
                if group in seen_groups:
                    continue
                seen_groups.add(group)
            kept.append((doc, score, passage))
        return kept

    def _hits(self, ranked, k: int, min_score: float | None) -> list[Hit]:
        ranked = [(doc, score, passage) for doc, score, passage in ranked[:k] if min_score is None or score >= min_score]
        rows = _document_rows(self.db, [doc for doc, _, _ in ranked])
        spans = _passage_spans(self.db, [passage for _, _, passage in ranked if passage is not None])
        hits = []
        for doc, score, passage in ranked:
            row = rows[doc]
            span = spans.get(passage)
            if span is not None and span[0] == 0 and span[1] >= len(row["text"]):
                span = None  # the whole text
            variants = _variants(self.db, row["group"]) if row["group"] is not None else ()
            hits.append(Hit(len(hits) + 1, row["key"], score, row["text"], row["fields"], row["group"], span, variants))
        return hits

    def get(self, key: str) -> Hit | None:
        """The stored entry with this key, or None."""
        with self._snapshot():
            row = self.db.execute("SELECT id FROM documents WHERE key = ?", [key]).fetchone()
            if row is None:
                return None
            data = _document_rows(self.db, [row[0]])[row[0]]
            variants = _variants(self.db, data["group"]) if data["group"] is not None else ()
            return Hit(0, data["key"], 1.0, data["text"], data["fields"], data["group"], None, variants)

    def close(self) -> None:
        self.db.close()


class _Snapshot:
    """A read transaction (and the searcher's lock) with the vectors of its generation loaded."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher

    def __enter__(self):
        self.searcher._lock.acquire()
        try:
            for attempt in range(5):
                self.searcher.db.execute("BEGIN")
                try:
                    self.searcher._refresh()
                    return self
                except (FileNotFoundError, RuntimeError):
                    # a writer removed that generation's file after committing a newer one: look again
                    self.searcher.db.execute("ROLLBACK")
                    if attempt == 4:
                        raise
        except BaseException:
            self.searcher._lock.release()
            raise

    def __exit__(self, *exc):
        try:
            if self.searcher.db.conn.in_transaction:
                self.searcher.db.execute("COMMIT")
        finally:
            self.searcher._lock.release()


def _rows_by_id(db, select: str, ids: list[int]):
    """Rows of `select` ("SELECT ... FROM t") for these ids, in chunks of 500 bound parameters.

    _rows_by_id(db, "SELECT id, group_key FROM documents", [3, 9]) -> [(3, None), (9, "g-1")]
    """
    rows = []
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        rows += db.execute(f"{select} WHERE id IN ({','.join('?' * len(part))})", part).fetchall()
    return rows


def _passage_owners(db, passages: list[int]) -> dict[int, int]:
    return dict(_rows_by_id(db, "SELECT id, document_id FROM passages", passages))


def _document_rows(db, ids: list[int]) -> dict[int, dict]:
    return {doc: {"key": key, "text": text, "fields": json.loads(fields or "{}"), "group": group}
            for doc, key, text, fields, group in _rows_by_id(db, "SELECT id, key, text, fields, group_key FROM documents", ids)}


def _document_groups(db, ids: list[int], with_fields: bool) -> dict[int, tuple[str | None, dict]]:
    """Group key (and stored fields, when filtering) per document: what collapsing needs, no texts."""
    column = "fields" if with_fields else "NULL"
    return {doc: (group, json.loads(fields) if fields else {})
            for doc, group, fields in _rows_by_id(db, f"SELECT id, group_key, {column} FROM documents", ids)}


def _passage_spans(db, passages: list[int]) -> dict[int, tuple[int, int]]:
    """[start, end) characters of each passage in its document's text."""
    return {p: (int(a), int(b)) for p, a, b in _rows_by_id(db, 'SELECT id, start, "end" FROM passages', passages)}


def _variants(db, group: str) -> tuple[str, ...]:
    return tuple(r[0] for r in db.execute("SELECT key FROM documents WHERE group_key = ? ORDER BY id", [group]))


def open_manifest(folder: str | Path) -> Manifest:
    """The manifest of an index, without loading its model."""
    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        return read_manifest(db, folder)
    finally:
        db.close()

"""Open an index and answer questions: embed -> FAISS top-k -> join texts, one row per document.

A Searcher loads the model and the vectors once; each search reads SQLite inside one read
transaction and first checks the committed generation, so a search during a write sees the old
or the new index, never a mix. Questions are embedded with the recipe of the generation they are
searched in: when another process re-embeds the index (`tune`), the searcher loads the matching
encoder instead of mixing recipes. Keyword and hybrid ranking live in `search.keyword`.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.embed.encoder import LONG_WARM_TOKENS, WARM_TOKENS, Encoder
from indexer.embed.recipe import Recipe, absolute_layer, check_pooling
from indexer.embed.projection import follows_map
from indexer.embed.resolve import encoder_for
from indexer.errors import BertdexError, IndexDamaged, OptionOutOfRange, UsageError
from indexer.ingest.entries import check_question
from indexer.options import MAX_K, check_k
from indexer.store import ann
from indexer.store.folder import check_index_folder, connect, open_manifest, open_vectors, read_manifest  # noqa: F401 (open_manifest: re-exported)
from indexer.ingest.embedding import embed_questions as question_vectors
from indexer.store.ann_compressed import load_flag
from search import keyword
from search.checks import check_opened, check_results
from search.collapse import DENSE_PER_ENTRY, MAX_POOL, collapse, pool_size, without
from search.filters import check_weight, passes

MODES = ("dense", "keyword", "hybrid")


@dataclass(frozen=True)
class Hit:
    """One answer: the entry's key, score (cosine; BM25 in keyword mode; cosine + BM25 with cosine fusion), texts, fields.

    In hybrid mode with score or rank fusion the hits come in the fused order but carry their cosine
    (search.keyword.scored_by_cosine), so a lower-ranked hit may show a higher score.
    """

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
    `purpose`: "question" (a process that keeps asking: the path fastest per question) or "once" (a process
    that asks a few and exits: the path quickest to start), see indexer.embed.choose.
    """

    def __init__(self, folder: str | Path, *, model: str | None = None, layer: int | None = None,
                 pooling: str | None = None, precision: str = "auto", threads: int | None = None,
                 backend: str = "auto", encoder: Encoder | None = None, purpose: str = "question"):
        self.folder = check_index_folder(Path(folder))
        self.db = connect(self.folder, readonly=True)
        self.manifest = read_manifest(self.db, self.folder)
        self._encoder_options = {"model": model, "precision": precision, "threads": threads, "backend": backend,
                                 "purpose": purpose}
        # a given encoder serves unless the index's learned map is not the one it applies
        self.encoder = encoder if encoder is not None and follows_map(encoder, self.manifest.recipe) \
            else encoder_for(self.manifest.recipe, **self._encoder_options)
        self._encoder_recipe = self.manifest.recipe  # what self.encoder was made for
        self._check_asked(layer, pooling)
        self._lock = threading.RLock()
        self._generation = self._generation_tried = -1
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
        manifest = read_manifest(self.db, self.folder)
        if manifest.generation != self._generation:
            self._generation_tried = manifest.generation
            known = frozenset(segment.file for segment in self.vectors.segments) if self.vectors is not None else frozenset()
            vectors = open_vectors(self.folder, manifest, flags=load_flag(manifest.index_type), reuse=self.vectors)
            if manifest.generation:
                check_opened(vectors, self.db, self.folder, manifest, known)
            self.vectors = vectors
            self._generation = manifest.generation
        self.manifest = manifest

    def encoder_for_recipe(self, recipe: Recipe) -> Encoder:
        """An encoder that embeds by `recipe`: the current one when it can, else one loaded for it."""
        with self._lock:
            made_for = self._encoder_recipe
            same_model = (made_for.model_checksum, made_for.max_length, made_for.companion, made_for.companion_share,
                          made_for.projection) \
                == (recipe.model_checksum, recipe.max_length, recipe.companion, recipe.companion_share,
                    recipe.projection)
            kept = getattr(self.encoder, "keep_layers", None)
            # ONNX Runtime gives its kept layer only; PyTorch gives any layer up to the kept one
            computes = kept is None or recipe.layer == kept or (self.encoder.model is not None and recipe.layer < kept)
            if not (same_model and computes):
                options = dict(self._encoder_options)
                if options["model"] is not None and made_for.model_checksum != recipe.model_checksum:
                    options["model"] = None  # the index was rebuilt with another model: load the one it names
                self.encoder = encoder_for(recipe, **options)
                self._encoder_recipe = recipe
            return self.encoder

    # -- searching ------------------------------------------------------------------------------

    def embed_questions(self, questions: list[str], *, long_questions: str | None = None) -> tuple[Recipe, np.ndarray | list]:
        """(the recipe, the questions' vectors by it): the recipe of the committed generation."""
        with self._snapshot():
            recipe, settings = self.manifest.recipe, self.manifest.settings
        return recipe, self._embed_by(recipe, settings, questions, long_questions)

    def embed(self, questions: list[str], *, long_questions: str | None = None) -> np.ndarray | list[np.ndarray]:
        """One vector per question ([n, d]); with long_questions="windows" and a question over the model's
        window, a list holding each question's [windows, d] vectors instead."""
        return self.embed_questions(questions, long_questions=long_questions)[1]

    def warm_up(self) -> None:
        """Pay a first question's one-off costs now (`serve` does, before it says it is ready): the encoder's
        (its arena, its threads) and, where the keyword side reads Korean (an index of Korean entries not
        searched dense alone), loading Kiwi (~1 s). On OpenVINO, each question width up to 128 tokens
        (indexer.embed.encoder.Encoder.warm_up); `warm_up_long` does those to 256, which serve runs on a thread
        once it is ready."""
        self.embed(["warm up"])
        # on a thread: OpenVINO runs without the GIL, beside Kiwi's loading, which holds it
        widths = threading.Thread(target=self._warm_widths, args=(8, WARM_TOKENS), name="bertdex-warm-up")
        widths.start()
        from indexer.store.keywords import KIWI_SCHEMES, hangul_syllable, korean_morphemes, scheme_of

        with self._snapshot():
            settings = self.manifest.settings
            sample = [row[0] for row in self.db.execute("SELECT text FROM documents LIMIT 50").fetchall()]
        if settings.search.mode != "dense" and scheme_of(settings) in KIWI_SCHEMES \
                and any(hangul_syllable(text) is not None for text in sample):
            korean_morphemes("준비")
        widths.join()

    def warm_up_long(self) -> None:
        """Prepare the question widths from 129 to 256 tokens on OpenVINO (nothing elsewhere): a long question's
        first time at its width then costs no more than its next."""
        self._warm_widths(WARM_TOKENS + 1, LONG_WARM_TOKENS)

    def _warm_widths(self, shortest: int, longest: int) -> None:
        """Encoder.warm_up on the question encoder, or on each model of a pair."""
        encoder = self.encoder
        for one in [encoder] if isinstance(encoder, Encoder) else [getattr(encoder, "own", None),
                                                                  getattr(encoder, "companion", None)]:
            if isinstance(one, Encoder) and one.keep_layers is not None:
                one.warm_up(longest, shortest=shortest)

    def _embed_by(self, recipe: Recipe, settings, questions: list[str], long_questions: str | None = None):
        embedded = question_vectors(self.encoder_for_recipe(recipe), recipe, settings, questions,
                                    long_questions=long_questions)
        vectors = embedded.of(recipe.layer, recipe.pooling)
        if len(embedded.owners) == len(questions):
            return vectors
        return [vectors[embedded.owners == i] for i in range(len(questions))]

    def search(self, question: str, k: int = 5, **options) -> list[Hit]:
        return self.search_many([question], k, **options)[0]

    def search_many(self, questions: list[str], k: int = 5, *, mode: str | None = None,
                    min_score: float | None = None, weight: float | None = None,
                    filters: dict | None = None, vectors: np.ndarray | list | None = None,
                    recipe: Recipe | None = None, exclude: list[frozenset] | None = None,
                    long_questions: str | None = None) -> list[list[Hit]]:
        """Ranked hits per question; questions are embedded in one batch.

        `mode`: dense, keyword or hybrid (default: the index's tuned mode, else dense).
        `min_score`: hits below it are dropped (an empty list means "no good answer").
        `weight`: hybrid, the dense side's share in [0, 1].
        `filters`: stored field -> required value, or a tuple of values any of which passes.
        `vectors`, `recipe`: the questions' vectors and the recipe they were made by (`embed_questions`),
        when already computed (the server's micro-batcher); made again if the index's recipe changed since
        (vectors without a recipe are taken to be by the committed one).
        `exclude`: per question, document ids never to return (evaluation: the question's own entries).
        `long_questions`: tail or windows (default: the index's setting), see indexer.ingest.embedding.
        """
        check_search_options(questions, k, mode, weight, min_score)
        if (mode or self.manifest.settings.search.mode) != "keyword" and vectors is None:
            recipe, vectors = self.embed_questions(questions, long_questions=long_questions)
        results = []
        with self._snapshot():
            tuned = self.manifest.settings.search
            mode = mode or tuned.mode
            weight = tuned.weight if weight is None else weight
            min_score = self.cut_for(mode, min_score)
            if mode == "keyword":
                vectors = None
            elif vectors is None or (recipe or self.manifest.recipe) != self.manifest.recipe:  # one generation per answer
                vectors = self._embed_by(self.manifest.recipe, self.manifest.settings, questions, long_questions)
            for i, question in enumerate(questions):
                ranked = self._rank(question, None if vectors is None else vectors[i], k, mode, weight, filters,
                                    exclude[i] if exclude else frozenset())
                results.append(self._hits(ranked, k, min_score))
        return results

    def cut_for(self, mode: str | None, min_score: float | None) -> float | None:
        """The cut a search applies: `min_score`, else the calibrated one if `mode` is the mode it was calibrated
        for, or the collection's (a cosine: indexer.store.offtopic) in dense and in hybrid other than cosine fusion."""
        tuned = self.manifest.settings.search
        if min_score is not None:
            return min_score
        mode = mode or tuned.mode
        if (tuned.cut or {}).get("source") == "collection" and not tuned.calibrated:
            on_cosine = mode == "dense" or (mode == "hybrid" and tuned.fusion != "cosine")
            return tuned.min_score if on_cosine else None
        # a calibrated cut is on the score scale of the mode it was calibrated for
        return tuned.min_score if mode == tuned.mode else None

    def _rank(self, question, vector, k, mode, weight, filters, exclude=frozenset()) -> list[tuple[int, float, int | None]]:
        """(document id, score, passage id) best first, one per document or group, filtered."""
        want = k
        while True:
            size = pool_size(want)
            dense = without(self._dense(vector, size + DENSE_PER_ENTRY * len(exclude)), exclude)[:size] \
                if mode != "keyword" else []
            words = without(keyword.search(self.db, question, size + len(exclude)), exclude)[:size] \
                if mode != "dense" else []
            if mode == "dense":
                ranked = dense
            elif mode == "keyword":
                ranked = words
            else:
                fusion = self.manifest.settings.search.fusion
                ranked = keyword.fuse(dense, words, weight, fusion)
                if fusion != "cosine":  # cosine fusion's score already says how close; the others: the cosine
                    ranked = keyword.scored_by_cosine(ranked, dense)
            kept = self._collapse(ranked, filters)
            exhausted = len(dense) < size and len(words) < size
            if len(kept) >= k or exhausted or size >= MAX_POOL:
                return kept[:k]
            want *= 4

    def _dense(self, vector: np.ndarray, n: int) -> list[tuple[int, float, int]]:
        """Top `n` passages by cosine; a question given as several window vectors scores by its best window.

        Each score stays paired with its own id (FAISS returns -1 for missing ids: never shift the pairs).
        """
        if self.vectors.ntotal == 0:
            return []
        matrix = np.atleast_2d(vector)
        scores, ids = ann.search(self.vectors, matrix, min(n, self.vectors.ntotal))  # every segment, merged by score
        check_results(self.vectors, scores, ids, self.folder)  # a score is a cosine or it is not shown
        best: dict[int, float] = {}
        for row_scores, row_ids in zip(scores, ids):
            for score, passage in zip(row_scores, row_ids):
                if passage >= 0 and float(score) > best.get(int(passage), -np.inf):
                    best[int(passage)] = float(score)
        passages = sorted(best, key=lambda p: (-best[p], p))[:n] if len(matrix) > 1 else list(best)
        owners = _passage_owners(self.db, passages)
        return [(owners[p], best[p], p) for p in passages if p in owners]

    def _collapse(self, ranked, filters) -> list[tuple[int, float, int | None]]:
        """Best row per document, then per group (search.collapse); drop rows that fail the filters."""
        rows = _document_groups(self.db, list(dict.fromkeys(doc for doc, _, _ in ranked)), bool(filters))

        def keep(doc: int) -> bool:
            return passes(rows[doc][1], filters)

        return collapse(ranked, {doc: group for doc, (group, _) in rows.items()}, keep=keep if filters else None)

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
            while True:
                self.searcher.db.execute("BEGIN")
                try:
                    self.searcher._refresh()
                    return self
                except IndexDamaged:
                    # a writer may have removed that generation's file after committing a newer one:
                    # look again if the generation moved, else the file really is damaged
                    self.searcher.db.execute("ROLLBACK")
                    if _generation(self.searcher.db) == self.searcher._generation_tried:
                        raise
        except BaseException:
            self.searcher._lock.release()
            raise

    def __exit__(self, *exc):  # noqa: D105
        try:
            if self.searcher.db.conn.in_transaction:
                self.searcher.db.execute("COMMIT")
        finally:
            self.searcher._lock.release()


def check_search_options(questions: list[str], k: int, mode: str | None, weight: float | None,
                   min_score: float | None) -> None:
    """The options as the HTTP service checks them, so every door refuses the same values."""
    if mode is not None and mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    check_k(k, MAX_K)
    check_weight(weight)
    if min_score is not None and math.isnan(min_score):  # -inf is allowed: "no cut" (calibrate uses it)
        raise OptionOutOfRange("--min-score nan: the min score must be a number, not NaN")
    for number, question in enumerate(questions, start=1):
        check_question(question, f"question {number}" if len(questions) > 1 else "question")


def _generation(db) -> int | None:
    db.execute("BEGIN")
    try:
        row = db.execute("SELECT value FROM manifest WHERE name = 'generation'").fetchone()
        return None if row is None else int(row[0])
    finally:
        db.execute("ROLLBACK")


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

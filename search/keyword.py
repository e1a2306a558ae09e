"""Keyword ranking (SQLite FTS5, BM25) and its fusion with the dense ranking.

Both are small functions over the open database and over ranked lists; the FTS5 table is
written by `indexer.store.folder` in the same transactions as the documents, so it never drifts.
"""

from __future__ import annotations

import json

from indexer.store.keywords import fts_query, scheme_of

Ranked = list[tuple[int, float, int | None]]  # (document id, score, passage id or None), best first
FUSIONS = ("score", "rank", "cosine", "agreement")
# agreement fusion: score fusion at the given dense share where the keyword side's first hit is among the dense
# side's first AGREE_RANKS, else at least DISAGREE_WEIGHT. A term match the vectors also rank near the top
# carries the question's meaning (a shared rare word); one they do not matched words that do not (issue 22,
# examples/faq_ko.csv: "신발을 한 치수 큰 걸로 바꾸고 싶어요" shares only 바꾸다 "change" with the card-change
# entry BM25 ranks first by far). Measured with no labels in bench/plain.py (docs/benchmarks.md).
AGREE_RANKS = 3
DISAGREE_WEIGHT = 0.8
# the first hit of a fusion must be within this share of the dense pool's spread (best cosine - lowest) of
# the best cosine: on a small FAQ min-max makes any keyword match worth as much as the closest entry, and
# a question sharing only common words with an entry ranked it first (issue 22: cosine -0.04 against 0.37)
NEAR_BEST = 0.5
SPREAD_POOL = 5  # fewer dense hits than this say nothing about the spread: no guard


def search(db, question: str, n: int, scheme: str | None = None) -> Ranked:
    """Top `n` documents by BM25 (higher is better) for the terms of `question`.

    `scheme`: the index's keyword term scheme (indexer.store.keywords), read from its manifest when None.
    """
    if scheme is None:
        row = db.execute("SELECT value FROM manifest WHERE name = 'settings'").fetchone()
        scheme = scheme_of(json.loads(row[0]) if row else {})
    query = fts_query(question, scheme)
    if query is None:
        return []
    rows = db.execute(
        "SELECT rowid, -bm25(keywords) AS score FROM keywords WHERE keywords MATCH ? ORDER BY score DESC LIMIT ?",
        [query, n],
    ).fetchall()
    return [(int(doc), float(score), None) for doc, score in rows]


def scored_by_cosine(fused: Ranked, dense: Ranked) -> Ranked:
    """The fused order, each row scored by its document's cosine: a score that says how close the answer
    is, which min-max and rank fusion do not (their top hit scores ~1 whatever the question), so the one
    shown and the one a calibrated "no good answer" cut applies to. A document only the keyword side
    found gets the lowest cosine of the dense pool (it ranked below all of it there).

    scored_by_cosine([(2, 0.5, 8), (1, 0.5, 7)], [(1, .9, 7), (2, .5, 8)]) -> [(2, 0.5, 8), (1, 0.9, 7)]
    """
    best: dict = {}
    for doc, score, _ in dense:
        best[doc] = max(best.get(doc, score), score)
    floor = min(best.values(), default=0.0)
    return [(doc, best.get(doc, floor), passage) for doc, _, passage in fused]


def fuse(dense: Ranked, words: Ranked, weight: float = 0.5, method: str = "score") -> Ranked:
    """One ranking from two: `weight` is the dense side's share (1.0 = dense only).

    method "score": min-max normalized scores, weighted sum (a missing side counts 0);
    method "rank": weighted reciprocal-rank fusion, 1 / (60 + rank);
    method "cosine": the dense side's raw cosine (documents it did not return get its lowest) plus min-max
    normalized BM25: the only fusion whose top score still says how close the best answer is, so the
    one a calibrated "no good answer" cut works with (min-max and rank fusion give every top hit ~1);
    method "agreement": "score" at `weight` when the keyword side's first hit is among the dense side's
    first AGREE_RANKS, else at max(weight, DISAGREE_WEIGHT) (`agreed_weight`).
    Whatever the method, the first hit is one whose cosine is near the best dense hit's (`first_near_best`).
    fuse([(1, .9, 7), (2, .5, 8)], [(2, 3.0, None)], 0.5) -> [(1, 0.5, 7), (2, 0.5, 8)]
    """
    if method not in FUSIONS:
        from indexer.errors import BertdexError

        raise BertdexError(f"unknown fusion {method!r}: choose one of {', '.join(FUSIONS)}")
    dense = _best_per_document(dense)
    words = _best_per_document(words)
    if method == "agreement":
        weight = agreed_weight(dense, words, weight)
    if method == "rank":
        dense_part = {doc: 1.0 / (60 + rank) for rank, (doc, _, _) in enumerate(dense, 1)}
        word_part = {doc: 1.0 / (60 + rank) for rank, (doc, _, _) in enumerate(words, 1)}
    elif method == "cosine":
        floor = min((score for _, score, _ in dense), default=0.0)
        dense_part = {doc: score for doc, score, _ in dense}
        dense_part.update({doc: floor for doc, _, _ in words if doc not in dense_part})
        word_part = _min_max(words)
    else:  # score and agreement
        dense_part, word_part = _min_max(dense), _min_max(words)
    passages = {doc: passage for doc, _, passage in words}
    passages.update({doc: passage for doc, _, passage in dense})
    fused = {
        doc: weight * dense_part.get(doc, 0.0) + (1.0 - weight) * word_part.get(doc, 0.0)
        for doc in passages
    }
    order = sorted(fused, key=lambda doc: (-fused[doc], doc))
    return first_near_best([(doc, fused[doc], passages[doc]) for doc in order], dense)


def agreed_weight(dense: Ranked, words: Ranked, weight: float) -> float:
    """The dense share agreement fusion uses: `weight` when the keyword side's first document is among the
    dense side's first AGREE_RANKS documents (or the keyword side found nothing), else at least DISAGREE_WEIGHT.

    agreed_weight([(1, .9, 7), (2, .8, 8)], [(2, 5.0, None)], 0.6) -> 0.6
    agreed_weight([(1, .9, 7), (2, .8, 8), (3, .7, 9), (4, .6, 5)], [(4, 5.0, None)], 0.6) -> 0.8
    """
    if not words:
        return weight
    first = list(dict.fromkeys(doc for doc, _, _ in dense))[:AGREE_RANKS]
    return weight if words[0][0] in first else max(weight, DISAGREE_WEIGHT)


def first_near_best(fused: Ranked, dense: Ranked) -> Ranked:
    """`fused` with its first hit replaced, when its cosine is far below the best dense hit's, by the first
    fused hit that is near it (within NEAR_BEST of the dense pool's spread); the rest keep their order.
    A document the dense side did not return counts as its lowest cosine. With fewer than SPREAD_POOL
    dense hits `fused` is returned as it is.

    first_near_best([(3, 1.0, None), (1, .6, 7)], [(1, .8, 7), (2, .5, 8), (5, .3, 5), (6, .2, 6), (4, 0.0, 9)])
    -> [(1, .6, 7), (3, 1.0, None)]
    """
    cosine = {doc: score for doc, score, _ in reversed(dense)}
    if not fused or len(cosine) < SPREAD_POOL:
        return fused
    best, low = max(cosine.values()), min(cosine.values())
    near = best - NEAR_BEST * (best - low)
    if cosine.get(fused[0][0], low) >= near:
        return fused
    first = next(i for i, (doc, _, _) in enumerate(fused) if cosine.get(doc, low) >= near)
    return [fused[first]] + fused[:first] + fused[first + 1:]


def _best_per_document(ranked: Ranked) -> Ranked:
    seen, best = set(), []
    for doc, score, passage in ranked:
        if doc not in seen:
            seen.add(doc)
            best.append((doc, score, passage))
    return best


def _min_max(ranked: Ranked) -> dict[int, float]:
    if not ranked:
        return {}
    scores = [score for _, score, _ in ranked]
    low, high = min(scores), max(scores)
    if high - low < 1e-12:
        return {doc: 1.0 for doc, _, _ in ranked}
    return {doc: (score - low) / (high - low) for doc, score, _ in ranked}

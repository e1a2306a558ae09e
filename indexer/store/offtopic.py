"""The "no good answer" cut an index makes from its own collection, at every commit, without labels.

bertdex ships ~100 everyday off-topic questions per language (indexer/ingest/offtopic_*.txt: weather,
recipes, sports, ...). Their vectors, by the index's recipe, are stored in the index (table
offtopic_sample, written by indexer.ingest.cut); each commit scores them against the committed vectors
and sets the cut at the SAMPLE_QUANTILE of their top cosines: the score a question about nothing the
desk knows reaches on this collection. That adapts to the model (multilingual-e5-small's cosines sit
between 0.7 and 0.9 for everything, all-MiniLM-L6-v2's off-topic ones near 0.2) and to the collection (a
broad one draws off-topic questions closer). Measured in bench/plain.py: see docs/benchmarks.md.

A calibrated cut (bertdex calibrate) is never replaced; keyword mode (BM25 scores) gets no cut. This
module does not embed: it reads the stored sample vectors and searches the FAISS index in memory.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

SAMPLE_QUANTILE = 0.9


def sample_of(db, recipe) -> tuple[np.ndarray, str] | None:
    """(the stored sample's vectors, its language) when they were embedded by `recipe`, else None."""
    if "offtopic_sample" not in db.table_names():
        return None
    row = db.execute("SELECT recipe, language, count, vectors FROM offtopic_sample ORDER BY id LIMIT 1").fetchone()
    if row is None or json.loads(row[0]) != recipe.to_dict():
        return None
    vectors = np.frombuffer(row[3], dtype=np.float32)
    return vectors.reshape(int(row[2]), -1), row[1]


def store_sample(db, recipe, language: str, vectors: np.ndarray) -> None:
    """Keep `vectors` (the sample by `recipe`) as the index's one sample row."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    db.execute("DELETE FROM offtopic_sample")
    db["offtopic_sample"].insert({"id": 1, "recipe": json.dumps(recipe.to_dict()), "language": language,
                                  "count": len(vectors), "vectors": vectors.tobytes()})


def cut_from_scores(top_scores: np.ndarray) -> float:
    """The cut for the off-topic sample's top scores: their SAMPLE_QUANTILE (numpy's linear interpolation).

    cut_from_scores(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])) -> 1.0
    """
    return float(np.quantile(top_scores, SAMPLE_QUANTILE))


def with_collection_cut(search, db, vector_index, recipe):
    """`search` (SearchSettings) with the cut made from this collection, or as it is where a calibrated cut
    stands, no sample by this recipe is stored, or the index is empty. Keyword mode drops a collection cut."""
    if search.calibrated or (search.min_score is not None and search.cut is None):
        return search  # calibrated, or set by hand through the settings: a commit keeps it
    if search.mode == "keyword":
        return replace(search, min_score=None, cut=None)
    sample = sample_of(db, recipe)
    if sample is None or vector_index.ntotal == 0 or sample[0].shape[1] != vector_index.d:
        return search
    from indexer.store import ann

    vectors, language = sample
    scores, _ = ann.search(vector_index, vectors, 1)
    top = scores[:, 0][scores[:, 0] > -1e30]  # a missing hit (FAISS fills -inf / -3.4e38) is no score
    if not len(top):
        return search
    cut = cut_from_scores(top)
    return replace(search, min_score=round(cut, 6), cut={
        "source": "collection", "language": language, "sample": len(vectors), "quantile": SAMPLE_QUANTILE,
        "rule": f"the {SAMPLE_QUANTILE:.0%} quantile of the top scores of {len(vectors)} everyday off-topic "
                f"questions ({language}) shipped with bertdex, against this collection"})

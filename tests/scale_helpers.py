"""Helpers of tests/test_scale.py: what an index holds, in a form two indexes can be compared in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.store.folder import connect, load_vectors, read_manifest


def contents(folder) -> dict:
    """Documents, keyword rows and vectors of an index, keyed by entry key (ids left out)."""
    folder = Path(folder)
    db = connect(folder, readonly=True)
    try:
        manifest = read_manifest(db, folder)
        documents = {row[0]: row[1:] for row in db.execute(
            "SELECT key, text, fields, group_key, content_hash FROM documents")}
        keywords = dict(db.execute("SELECT d.key, k.terms FROM keywords k JOIN documents d ON d.id = k.rowid").fetchall())
        passages = db.execute("SELECT p.id, d.key, p.start, p.end FROM passages p JOIN documents d ON d.id = p.document_id "
                              "ORDER BY d.key, p.start").fetchall()
    finally:
        db.close()
    index = load_vectors(folder, manifest.generation, manifest.recipe.dimension)
    vectors = np.stack([index.reconstruct(int(row[0])) for row in passages]) if passages else np.zeros((0, index.d))
    return {"documents": documents, "keywords": keywords, "spans": [row[1:] for row in passages],
            "vectors": vectors, "manifest": manifest}


def assert_same_index(a, b, cosine: float = 0.99999) -> None:
    left, right = contents(a), contents(b)
    assert left["documents"] == right["documents"]
    assert left["keywords"] == right["keywords"]
    assert left["spans"] == right["spans"]
    assert left["vectors"].shape == right["vectors"].shape
    agreement = np.sum(left["vectors"] * right["vectors"], axis=1)
    assert agreement.min() >= cosine, agreement.min()
    assert left["manifest"].settings.loading is None and right["manifest"].settings.loading is None


def clustered(count: int, dimension: int = 48, seed: int = 0) -> np.ndarray:
    """Unit vectors around 40 centres: structure like sentence embeddings have, unlike uniform noise."""
    import faiss

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dimension)).astype(np.float32)
    points = centres[rng.integers(0, 40, count)] + 0.6 * rng.normal(size=(count, dimension)).astype(np.float32)
    faiss.normalize_L2(points)
    return points


def numpy_top(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return [int(ids[i]) for i in np.argsort(-(vectors @ query), kind="stable")[:k]]


def built(index_type: str, vectors: np.ndarray, ids: np.ndarray):
    from indexer.store import ann

    index = ann.new_index(index_type, vectors.shape[1], {})
    index.add_with_ids(vectors, ids)
    return ann.finish(index, index_type, {}, np.zeros(0, dtype=np.int64))

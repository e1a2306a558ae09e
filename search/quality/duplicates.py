"""Near-duplicate entries: pairs of entries whose vectors are closer than a threshold, for a desk to merge.

An entry's vector is the normalized mean of its passages' vectors (one passage for a short text).
The threshold, unless given, is measured on the collection's own groups: the 90th percentile of the
cosines between two phrasings of one question (entries sharing a group). A pair of entries from
different groups (or with no group) closer than 9 in 10 of the desk's own phrasing pairs reads as one
question asked twice. Without groups the threshold is DEFAULT_THRESHOLD, measured on the example FAQs. Entries of one group
are variants by design and are never listed. Search is exact (FAISS range search over all entries:
fine for help-desk sizes, quadratic in the entry count). This module changes nothing in the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.options import check_range
from indexer.store import ann
from indexer.store.folder import check_index_folder, connect, load_vectors, read_manifest

# no groups: just above the closest two different questions of examples/faq_en.csv (0.697, en-003 and
# en-005) with the bundled model; the three pairs above it there are phrasings of one question
DEFAULT_THRESHOLD = 0.70
GROUP_QUANTILE = 0.9
MAX_PER_GROUP = 50  # phrasings of one group measured at most (pairs grow as the square)


@dataclass(frozen=True)
class Pair:
    cosine: float
    key_a: str
    key_b: str
    text_a: str
    text_b: str
    group_a: str | None
    group_b: str | None

    def to_dict(self) -> dict:
        return {"cosine": round(self.cosine, 6), "key_a": self.key_a, "key_b": self.key_b, "text_a": self.text_a,
                "text_b": self.text_b, "group_a": self.group_a, "group_b": self.group_b}


@dataclass(frozen=True)
class Duplicates:
    """The pairs at or above `threshold`, closest first (at most the limit; `more` were left out)."""

    folder: str
    threshold: float
    rule: str
    pairs: tuple[Pair, ...]
    more: int

    def to_dict(self) -> dict:
        return {"folder": self.folder, "threshold": round(self.threshold, 6), "rule": self.rule,
                "pairs": [pair.to_dict() for pair in self.pairs], "more": self.more}


def find_duplicates(folder: str | Path, *, threshold: float | None = None, limit: int = 100) -> Duplicates:
    """find_duplicates("faq") -> Duplicates(threshold=0.70, pairs=(Pair(0.777, "en-001", "en-006", ...), ...))"""
    check_range("--threshold", threshold, -1, 1, why="a cosine")
    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        documents, groups, vectors = _document_vectors(db, folder)
        if threshold is None:
            threshold, rule = measured_threshold(vectors, groups)
        else:
            rule = "as given"
        found = close_pairs(vectors, groups, threshold)
        listed = found[:limit]
        rows = _texts(db, [int(documents[row]) for _, i, j in listed for row in (i, j)])
        pairs = []
        for score, i, j in listed:
            (key_a, text_a), (key_b, text_b) = rows[int(documents[i])], rows[int(documents[j])]
            pairs.append(Pair(score, key_a, key_b, text_a, text_b, groups[i], groups[j]))
    finally:
        db.close()
    return Duplicates(str(folder), threshold, rule, tuple(pairs), len(found) - len(listed))


def measured_threshold(vectors: np.ndarray, groups: list[str | None]) -> tuple[float, str]:
    """The GROUP_QUANTILE of the cosines between phrasings of one group, or DEFAULT_THRESHOLD with no group of two.

    measured_threshold(unit vectors, ["a", "a", "b", None]) -> (cosine of the two "a" rows, "the 90th ...")
    """
    members: dict[str, list[int]] = {}
    for position, group in enumerate(groups):
        if group is not None:
            members.setdefault(group, []).append(position)
    inside = []
    for rows in members.values():
        rows = rows[:MAX_PER_GROUP]
        if len(rows) > 1:
            block = vectors[rows] @ vectors[rows].T
            inside.extend(block[np.triu_indices(len(rows), k=1)].tolist())
    if not inside:
        return DEFAULT_THRESHOLD, "no group has two entries: the default, measured on the example FAQs"
    value = float(np.quantile(np.asarray(inside), GROUP_QUANTILE))
    return value, (f"the {GROUP_QUANTILE * 100:.0f}th percentile of the cosines between phrasings of one question, "
                   f"{len(inside)} pairs in the index's groups")


def close_pairs(vectors: np.ndarray, groups: list[str | None], threshold: float) -> list[tuple[float, int, int]]:
    """(cosine, row i, row j) for i < j at or above `threshold`, not of one group, closest first."""
    import faiss

    if len(vectors) < 2:
        return []
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    limits, scores, neighbours = exact.range_search(vectors, float(np.nextafter(np.float32(threshold), -2)))
    found = []
    for i in range(len(vectors)):
        for score, j in zip(scores[limits[i]:limits[i + 1]], neighbours[limits[i]:limits[i + 1]]):
            if j > i and score >= threshold and (groups[i] is None or groups[i] != groups[j]):
                found.append((float(score), i, int(j)))
    found.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return found


def _document_vectors(db, folder: Path) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """(document ids, their groups, their unit vectors: the normalized mean of their passages)."""
    manifest = read_manifest(db, folder)
    ids, passage_vectors = ann.stored(load_vectors(folder, manifest.generation, manifest.recipe.dimension))
    owner = dict(db.execute("SELECT id, document_id FROM passages").fetchall())
    documents = np.array(sorted({owner[int(p)] for p in ids if int(p) in owner}), dtype=np.int64)
    position = {int(doc): row for row, doc in enumerate(documents)}
    sums = np.zeros((len(documents), passage_vectors.shape[1]), dtype=np.float32)
    for passage, vector in zip(ids, passage_vectors):
        if int(passage) in owner:
            sums[position[owner[int(passage)]]] += vector
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    group_of = dict(db.execute("SELECT id, group_key FROM documents").fetchall())
    return documents, [group_of.get(int(doc)) for doc in documents], sums


def _texts(db, ids: list[int]) -> dict[int, tuple[str, str]]:
    wanted = sorted(set(ids))
    rows = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        marks = ", ".join("?" for _ in chunk)
        for doc, key, text in db.execute(f"SELECT id, key, text FROM documents WHERE id IN ({marks})", chunk):
            rows[doc] = (key, text)
    return rows

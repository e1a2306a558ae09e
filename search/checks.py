"""What a searcher checks before it trusts its vectors: at opening, and on every answer's FAISS results.

A score is a cosine or it is not shown. Every answer checks the dense results it is about to use
(`check_results`): each score within [-1 - SCORE_SLACK, 1 + SCORE_SLACK], each returned id's stored
vector of unit length (within NORM_TOLERANCE), no id twice in one result list. Opening a generation
(`check_opened`) checks what it can afford: the segments' live ids against SQLite's passages (count,
largest id, no id twice), the norms of a spread sample of OPEN_SAMPLE vectors, and each newly read
segment file's checksum when it is at most integrity.CHECKSUM_AT_OPEN_BYTES (64 MiB; a larger file's checksum is `bertdex verify`'s). Any failure raises
IndexDamaged with one line that ends in the advice to run `bertdex repair`. These are functions of
the merged results and the loaded index only: they do not search or read texts.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from indexer.errors import IndexDamaged
from indexer.store import ann, integrity

SCORE_SLACK = 1e-3  # float32 inner products of unit vectors stay well inside this
NORM_TOLERANCE = 1e-3  # as `bertdex verify`
OPEN_SAMPLE = 64


def damaged(folder: Path, what: str) -> IndexDamaged:
    return IndexDamaged(f"index {folder} is damaged: {what}; run `bertdex repair {folder}`")


def check_results(index: faiss.Index, scores: np.ndarray, ids: np.ndarray, folder: Path) -> None:
    """FAISS's [questions, n] scores and ids for one search: raise IndexDamaged if any is impossible.

    Costs one reconstruction per distinct returned id (k to a few hundred floats' worth).
    """
    for row_scores, row_ids in zip(np.atleast_2d(scores), np.atleast_2d(ids)):
        live = row_ids >= 0
        found, row_scores = row_ids[live], row_scores[live]
        if found.size != np.unique(found).size:
            twice = found[np.flatnonzero(np.bincount(np.unique(found, return_inverse=True)[1]) > 1)[0]]
            raise damaged(folder, f"its vectors file returned passage {int(twice)} twice for one question")
        bad = ~(np.abs(row_scores) <= 1 + SCORE_SLACK)  # NaN counts as bad
        if bad.any():
            raise damaged(folder, f"passage {int(found[bad][0])} scored {float(row_scores[bad][0]):.4g}, "
                                  "which no cosine can be")
    returned = np.unique(np.atleast_2d(ids))
    returned = returned[returned >= 0]
    if returned.size:
        norms = np.linalg.norm(_vectors_of(index, returned), axis=1)
        off = ~(np.abs(norms - 1) <= NORM_TOLERANCE)
        if off.any():
            raise damaged(folder, f"the stored vector of passage {int(returned[off][0])} is not of unit length "
                                  f"(norm {float(norms[off][0]):.4g})")


def check_opened(vectors, db, folder: Path, manifest, known: frozenset = frozenset()) -> None:
    """Cheap checks of a freshly loaded generation (indexer.store.segments.SegmentSet) against SQLite;
    raise IndexDamaged if one fails. `known`: segment files checked when an earlier generation opened."""
    from indexer.store import segments

    for record in segments.records_of(manifest):
        if record["file"] not in known and integrity.checksum_affordable(record):
            integrity.check_faiss_file(Path(folder) / record["file"], record, checksum=True)
    parts = []
    for segment in vectors.segments:
        if not hasattr(segment.index, "id_map") or segment.index.ntotal == 0:
            continue
        ids = faiss.vector_to_array(segment.index.id_map)
        ids = ids[ids != ann.TOMBSTONE]
        parts.append(ids[~np.isin(ids, segment.deleted)] if len(segment.deleted) else ids)
    if not parts:
        return
    ids = np.concatenate(parts)
    count, largest = db.execute("SELECT count(*), max(id) FROM passages").fetchone()
    if ids.size != count:
        raise damaged(folder, f"its vectors files hold {ids.size} live vectors, bertdex.db {count} passages")
    # ids are added in ascending order, segment after segment, and every change keeps it: one pass; else a sort
    ascending = bool(np.all(ids[1:] > ids[:-1]))
    if ids.size and (int(ids.max()) > (largest or 0) or (not ascending and np.unique(ids).size != ids.size)):
        raise damaged(folder, "the id map of its vectors files holds ids that are no passage's or appear twice")
    picks = ids[np.unique(np.linspace(0, ids.size - 1, min(OPEN_SAMPLE, ids.size)).astype(int))]
    norms = np.linalg.norm(_vectors_of(vectors, picks), axis=1)
    off = ~(np.abs(norms - 1) <= NORM_TOLERANCE)
    if off.any():
        raise damaged(folder, f"the stored vector of passage {int(picks[off][0])} is not of unit length "
                              f"(norm {float(norms[off][0]):.4g})")


def _vectors_of(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    try:
        return ann.vectors_of(index, ids)
    except RuntimeError as error:  # an id the map cannot find: the id map and the vectors disagree
        raise IndexDamaged(f"a returned id has no stored vector ({str(error).strip().splitlines()[-1][:120]}); "
                           "run `bertdex repair`") from None

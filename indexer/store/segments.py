"""An index's vectors as segments: immutable FAISS files, each recorded in the manifest with its checksum,
plus a deletion set (passage ids still in a file but no longer in the index).

A write adds one small (flat) segment and marks its deletions, so its cost follows the write, not the
archive. A search asks every segment for its top k (FAISS leaves the deleted ids out) and keeps the
best k by score: every type re-scores exactly (flat, HNSW and IVF store float32, sq8/ivfpq refine on
it), so scores from different segments compare. A merge folds the newest segments into one once
MERGE_FACTOR of them share a size tier (`plan_merge`), dropping their deleted vectors; segments of
SMALL_SEGMENT vectors and more are built as the index's type (compressed ones from the codebook file,
not retrained; an ivfpq index codes them from CODED_SEGMENT vectors). Ids only grow: segment i+1's ids are all above segment i's, so each segment owns an
id range [first_id, last_id], and a merge of the newest segments keeps the ranges apart.

An index written before segments (format 1) has one file, vectors.<G>.faiss, read as one segment.
This module reads and plans; writing files and committing is indexer.store.folder's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer.store import ann, integrity
from indexer.store import ann_compressed as compressed

MERGE_FACTOR = 8  # this many segments of one tier are folded into one
TIER_UNIT = 1_000  # tier 0: under MERGE_FACTOR x this many vectors; each tier above is MERGE_FACTOR times larger
SMALL_SEGMENT = ann.AUTO_FLAT_MAX  # merged segments below this stay flat (exact, and fast at this size)
# ...except in an ivfpq index, whose merged segments from this size are coded with its codebook and searched at
# its depth: beside a 2M ivfpq segment answering in 0.57 ms, 5,000 flat vectors took 0.15 ms more a question
# (bench/writes.py). sq8 codes scan no faster than float32 at these sizes: its small segments stay flat.
CODED_SEGMENT = 1_000


def records_of(manifest) -> list[dict]:
    """The manifest's segments: {"file", "bytes", "blake2b", "ntotal", "kind", "first_id", "last_id"} each,
    oldest first. A format-1 manifest names one file, vectors.<generation>.faiss (no id range recorded)."""
    if manifest.segments:
        return [dict(record) for record in manifest.segments]
    if manifest.generation == 0:
        return []
    return [{"file": f"vectors.{manifest.generation}.faiss", **manifest.faiss_file, "kind": manifest.index_type,
             "first_id": 0, "last_id": None, "tombstones": manifest.index_params.get("tombstones", 0)}]


def files_of(manifest) -> set[str]:
    """Every file of the folder that the manifest names (its segments and codebook)."""
    names = {record["file"] for record in records_of(manifest)}
    return names | ({manifest.codebook["file"]} if manifest.codebook else set())


def deleted_in(record: dict, deleted: np.ndarray) -> np.ndarray:
    """The deleted ids inside a segment's id range."""
    last = np.iinfo(np.int64).max if record.get("last_id") is None else record["last_id"]
    return deleted[(deleted >= record.get("first_id", 0)) & (deleted <= last)]


def live(record: dict, deleted: np.ndarray) -> int:
    return int(record.get("ntotal", 0)) - int(record.get("tombstones", 0)) - len(deleted_in(record, deleted))


@dataclass
class Segment:
    file: str
    index: faiss.Index
    deleted: np.ndarray  # ids in this segment that searches drop
    blake2b: str | None = None  # the recorded checksum: with the name, what says two generations share the file
    first_id: int = 0  # the segment's id range (a format-1 file: no last_id)
    last_id: int | None = None
    params: object = None  # search parameters: FAISS skips the deleted ids (and an HNSW index its tombstones)

    def __post_init__(self):
        self.params, self._selectors = _parameters(self.index, self.deleted)


class SegmentSet:
    """The committed generation's segments, searched as one index (`search` has faiss's signature, so
    ann.search and ann.recall_at take a SegmentSet)."""

    def __init__(self, segments: list[Segment], dimension: int):
        self.segments, self.d = segments, dimension
        self.ntotal = sum(ann.live_count(s.index) - len(s.deleted) for s in segments)

    def search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best live vectors per query, best first, padded with (-inf, -1).
        Call it through ann.search (one thread for a few questions, as for one FAISS index)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.d)
        found = []
        for segment in self.segments:
            size = segment.index.ntotal
            if size == 0:
                continue
            found.append(_search_one(segment, queries, k))
        if len(found) == 1 and found[0][1].shape[1] == k:
            return found[0]  # one segment: FAISS's own answer
        if sum(f[1].shape[1] for f in found) < k:  # fewer than k in all: padded, as FAISS pads
            found.append((np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)))
        scores, ids = np.concatenate([f[0] for f in found], axis=1), np.concatenate([f[1] for f in found], axis=1)
        scores[ids < 0] = -np.inf  # FAISS pads with -FLT_MAX
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: the older segment first
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def reconstruct(self, passage: int) -> np.ndarray:
        return self.vectors_of(np.asarray([passage], dtype=np.int64))[0]

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these ids, [len(ids), d], each from the segment whose id range holds it
        (ann.vectors_of; an id no segment holds raises RuntimeError)."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros((len(ids), self.d), dtype=np.float32)
        placed = np.zeros(len(ids), dtype=bool)
        for segment in self.segments:
            last = np.iinfo(np.int64).max if segment.last_id is None else segment.last_id
            mine = ~placed & (ids >= segment.first_id) & (ids <= last)
            if mine.any():
                found[mine] = ann.vectors_of(segment.index, ids[mine])
                placed |= mine
        if not placed.all():
            raise RuntimeError(f"id {int(ids[~placed][0])} is in no segment")
        return found

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live vector, oldest segment first."""
        parts = [_live_stored(segment) for segment in self.segments]
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.d), np.float32)
        return np.concatenate([p[0] for p in parts]), np.vstack([p[1] for p in parts])

    def kinds(self) -> list[str]:
        return [ann.kind(segment.index) for segment in self.segments]


def _search_one(segment: Segment, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One segment's top k (fewer when it holds fewer), its deleted ids left out by FAISS."""
    return segment.index.search(queries, min(segment.index.ntotal, k), params=segment.params)


def _parameters(index: faiss.Index, deleted: np.ndarray):
    """(search parameters, the selector objects they point to) that leave `deleted` out inside FAISS;
    (ann._live_only's, ()) when nothing is deleted."""
    kind = ann.kind(index)
    if not len(deleted):
        return ann._live_only(index), ()
    if kind in compressed.COMPRESSED:
        return _compressed_parameters(index, deleted)
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(deleted, dtype=np.int64))
    keep = faiss.IDSelectorNot(batch)
    inner = faiss.downcast_index(index.index)
    if kind == "flat":
        params = faiss.SearchParameters()
    elif kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = inner.hnsw.efSearch
        keep = faiss.IDSelectorAnd(ann._LIVE, keep)  # and skip its tombstones, as ann._live_only does
    else:
        params = faiss.SearchParametersIVF()
        params.nprobe = inner.nprobe
    params.sel = keep
    return params, (batch, keep, params)


def _compressed_parameters(index: faiss.Index, deleted: np.ndarray):
    """sq8 / ivfpq: the selector goes to the codes (IndexRefine hands its base only `base_index_params`), in
    the codes' own ids, the positions in the id map (FAISS's id map translates only a selector at the top).
    The candidates re-scored are then all live: no more are asked for than without deletions (asking
    k + deleted and dropping them made a 2M ivfpq with 100 deleted 1.2x slower a question)."""
    ids = faiss.vector_to_array(index.id_map)
    if len(ids) and (ids[1:] >= ids[:-1]).all():  # ids grow within a segment: no sort of them needed
        at = np.searchsorted(ids, deleted)
        positions = at[(at < len(ids)) & (ids[np.minimum(at, len(ids) - 1)] == deleted)]
    else:
        positions = np.flatnonzero(np.isin(ids, deleted))
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(positions, dtype=np.int64))
    keep = faiss.IDSelectorNot(batch)
    inner = faiss.downcast_index(index.index)
    base = faiss.downcast_index(inner.base_index)
    codes = faiss.SearchParametersIVF() if isinstance(base, faiss.IndexIVF) else faiss.SearchParameters()
    if isinstance(base, faiss.IndexIVF):
        codes.nprobe = base.nprobe
    codes.sel = keep
    params = faiss.IndexRefineSearchParameters()
    params.k_factor, params.base_index_params = inner.k_factor, codes
    return params, (batch, keep, codes, params)


def _live_stored(segment: Segment) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = ann.stored(segment.index)
    if len(segment.deleted):
        keep = ~np.isin(ids, segment.deleted)
        ids, vectors = ids[keep], vectors[keep]
    return ids, vectors


def open_segments(folder: Path, manifest, *, checksum: bool = False, flags: int = 0,
                  reuse: SegmentSet | None = None) -> SegmentSet:
    """The segments the manifest names, each after integrity.read_faiss's checks (IndexDamaged if one fails).

    `reuse`: the segments of an earlier generation; files are immutable, so one with the same name and
    checksum is taken as it is (a new generation that added one segment reads only that one)."""
    deleted = np.asarray(manifest.deleted, dtype=np.int64)
    known = {(s.file, s.blake2b): s.index for s in (reuse.segments if reuse else [])}
    segments = []
    for record in records_of(manifest):
        index = known.get((record["file"], record.get("blake2b")))
        if index is None or checksum:
            checked = {name: record[name] for name in ("bytes", "blake2b", "ntotal") if name in record}
            index = integrity.read_faiss(Path(folder) / record["file"], checked, manifest.recipe.dimension,
                                         checksum=checksum, flags=flags)
        segments.append(Segment(record["file"], index, deleted_in(record, deleted), record.get("blake2b"),
                                record.get("first_id", 0), record.get("last_id")))
    return SegmentSet(segments, manifest.recipe.dimension)


def tier(size: int) -> int:
    """tier(500) -> 0, tier(7_999) -> 0, tier(8_000) -> 1, tier(64_000) -> 2 (MERGE_FACTOR 8, TIER_UNIT 1,000)."""
    if size < MERGE_FACTOR * TIER_UNIT:
        return 0
    return int(math.log(size / TIER_UNIT, MERGE_FACTOR) + 1e-9)


def plan_merge(sizes: list[int]) -> int | None:
    """Where the newest segments to merge start (they run to the end), or None: fold the newest
    MERGE_FACTOR segments once they share a tier, and again while the merged one completes a tier.

    plan_merge([10**6] + [100] * 7) -> None; plan_merge([10**6] + [100] * 8) -> 1
    """
    sizes, start = list(sizes), None
    while len(sizes) >= MERGE_FACTOR and len({tier(s) for s in sizes[-MERGE_FACTOR:]}) == 1:
        begin = len(sizes) - MERGE_FACTOR
        sizes[begin:] = [sum(sizes[begin:])]
        start = begin if start is None else min(start, begin)
        # a merge that folded segments merged before counts from the earlier start
    return start


def merged_index(vectors: np.ndarray, ids: np.ndarray, manifest, codebook: faiss.Index | None,
                 whole: bool = False) -> tuple[faiss.Index, str, dict]:
    """One segment holding `vectors` (with `ids`) -> (index, kind, params). Flat under SMALL_SEGMENT vectors,
    else the index's type; compressed types take `codebook`'s trained codes unless the count left the
    range they were trained for. `whole`: the index's only segment (`bertdex compact`), built as a rebuild
    builds it (any size), with its params for the manifest."""
    params = manifest.index_params
    requested = ann.requested_type(manifest.index_type, params)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(manifest.recipe.dimension))
    codes = compressed.compressed_kind(faiss.downcast_index(codebook.index)) if codebook is not None else None
    if (not whole and codes == "ivfpq" and len(ids) >= CODED_SEGMENT and "nprobe" in params
            and compressed.fits_training(manifest.vectors, params, ann.IVF_RETRAIN_GROWTH)):
        # an ivfpq index's merged segment: the codebook suits the collection it was trained on, whatever the
        # segment's own size, and so does the collection's tuned depth (a segment's own sample, sparse over
        # the lists, asks for all of them: 0.88 ms for 5,000 vectors against a flat scan's 0.15)
        built, built_params = compressed.build(codes, codebook, vectors, params, retrain=False)
        built.add_with_ids(vectors, ids)
        inner = faiss.downcast_index(built.index)
        inner.k_factor = float(params.get("k_factor", compressed.K_FACTOR))
        faiss.downcast_index(inner.base_index).nprobe = int(params["nprobe"])
        return built, codes, {**built_params, "nprobe": int(params["nprobe"]), "k_factor": inner.k_factor,
                              "requested": requested}
    if not whole and (len(ids) < SMALL_SEGMENT or requested == "flat"):
        flat.add_with_ids(vectors, ids)
        return flat, "flat", {"requested": requested}
    target = ann.choose(requested, len(ids), manifest.index_type, manifest.recipe.dimension, compressed.machine_memory())
    if (target in compressed.COMPRESSED and codebook is not None and len(ids)
            and compressed.compressed_kind(faiss.downcast_index(codebook.index)) == target
            and compressed.fits_training(len(ids), params, ann.IVF_RETRAIN_GROWTH)):
        built, built_params = compressed.build(target, codebook, vectors, params, retrain=False)
        built.add_with_ids(vectors, ids)
        return ann._tune(built, target, {**built_params, "requested": requested})
    flat.add_with_ids(vectors, ids)
    kept = params if whole else {name: params[name] for name in ("requested", "M", "ef_construction") if name in params}
    return ann.finish(flat, manifest.index_type, kept, np.zeros(0, np.int64))


def codebook_of(index: faiss.Index) -> faiss.Index | None:
    """An empty copy of a compressed index's trained codes (IVF centroids, PQ or SQ tables), else None."""
    inner = faiss.downcast_index(index.index)
    if not compressed.compressed_kind(inner):
        return None
    base = faiss.clone_index(faiss.downcast_index(inner.base_index))  # the codes' tables; its lists emptied next
    base.reset()
    refine = faiss.IndexRefineFlat(base)
    refine.k_factor = inner.k_factor
    return faiss.IndexIDMap2(refine)

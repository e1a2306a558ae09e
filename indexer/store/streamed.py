"""Compressed indexes built without holding their float32 vectors in memory (`bertdex index` of sq8 or ivfpq
at millions of vectors): the build's vectors go to flat files on disk a chunk at a time (`FlatSpool`), and
one compressed segment is coded from those files chunk by chunk (`write_compressed`).

The segment is the FAISS file bertdex writes for the type (IndexIDMap2 over an IndexRefineFlat: the codes,
then the float32 copy they are re-scored on), written by hand around FAISS's own serialization of the codes,
so its float32 part is copied from the flat files rather than held. In memory: the codes (96 B a vector for
ivfpq), the ids (8 B), the training sample and one chunk. On disk, for a moment: the flat files and the new
file (twice the float32). The codebook is trained on a random sample, and the depth tuned as a rebuild tunes
it (ann.tune_compressed), with exact answers found chunk by chunk. This module writes the files its caller
names; committing them is indexer.store.folder's.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import faiss
import numpy as np

from indexer.store import ann, integrity
from indexer.store import ann_compressed as compressed

CHUNK = 131_072  # vectors read, coded or copied at a time (192 MiB of float32 at 384 dimensions)
SPOOL_VECTORS = 65_536  # a streamed writer's vectors in memory before they go to its spool file (96 MiB at 384)
TRAIN_SAMPLE = 10_240  # vectors trained on: this many plus 40 per IVF list (bench/scale.py's sample)


FLAT_DATA_AT = 2 * (4 + 33) + 8  # a flat segment file's first float: after "IxM2", "IxFI", their headers, the length


def _header(dimension: int, count: int) -> bytes:
    """FAISS's index header (write_index_header): d, ntotal, two unused 1 << 20, is_trained, inner product."""
    return struct.pack("<iqqq?i", dimension, count, 1 << 20, 1 << 20, True, faiss.METRIC_INNER_PRODUCT)


class FlatSpool:
    """A flat segment file, IndexIDMap2 over IndexFlatIP exactly as faiss.write_index writes one, written a
    chunk at a time: its header with the count left open, the vectors as they come, then at `close` the ids
    and the count. Only the ids stay in memory.

    spool = FlatSpool(folder / "vectors.3.spool", 384); spool.add(vectors, ids); ...; ids = spool.close()
    """

    def __init__(self, path: Path, dimension: int):
        self.path, self.d, self.count = Path(path), dimension, 0
        self._ids: list[np.ndarray] = []
        self._handle = open(self.path, "wb")
        self._write(self._head())

    def _head(self) -> bytes:
        return (b"IxM2" + _header(self.d, self.count) + b"IxFI" + _header(self.d, self.count)
                + struct.pack("<Q", self.count * self.d))

    def _write(self, data: bytes) -> None:
        try:
            self._handle.write(data)
        except OSError as error:
            self.discard()
            if integrity.no_space(self.path.parent, error):
                raise integrity.disk_full(self.path.parent) from None
            raise

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self._ids.append(np.asarray(ids, dtype=np.int64).copy())
        self.count += len(ids)

    def ids(self) -> np.ndarray:
        return np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)

    def close(self) -> np.ndarray:
        """Write the ids and the count, fsync; returns the ids in file order."""
        ids = self.ids()
        self._write(struct.pack("<Q", len(ids)) + ids.tobytes())
        self._handle.seek(0)
        self._write(self._head())
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return ids

    def discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)


class Sources:
    """The live vectors of FAISS files (the build's flat segments and spool), read mapped, in file order:
    ids in `deleted` (and HNSW tombstones) left out.

    `count` live vectors; `chunks()` yields (ids, vectors) of at most CHUNK; `rows(positions)` the vectors at
    these live positions (sorted), for the training sample."""

    def __init__(self, paths: list[Path], deleted: np.ndarray):
        self.parts = []
        for path in paths:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            keep = (ids != ann.TOMBSTONE) & ~np.isin(ids, deleted)
            inner = faiss.downcast_index(index.index)
            if isinstance(inner, faiss.IndexIVF):
                inner.make_direct_map()  # an IVF segment (of a load begun before streamed builds) reads by position
            self.parts.append((path, index, inner, ids, np.flatnonzero(keep)))
        self.count = sum(len(part[-1]) for part in self.parts)
        self.d = self.parts[0][1].d if self.parts else 0

    @staticmethod
    def _flat(path: Path, inner: faiss.Index) -> bool:
        """Is this a flat file laid out as FlatSpool (and FAISS) writes one? Its vectors are then read, not
        mapped: pages read through a mapping count in the process's resident memory until reclaimed."""
        if not isinstance(inner, faiss.IndexFlat):
            return False
        with open(path, "rb") as handle:
            return handle.read(41)[37:] == b"IxFI"

    def _read(self, path: Path, inner: faiss.Index, start: int, count: int) -> np.ndarray:
        """Vectors start..start+count-1 of one file."""
        if self._flat(path, inner):
            offset = FLAT_DATA_AT + 4 * self.d * start
            return np.fromfile(path, dtype=np.float32, count=count * self.d, offset=offset).reshape(count, self.d)
        return inner.reconstruct_n(start, count)

    def chunks(self, size: int | None = None):
        size = size or CHUNK
        for path, _, inner, ids, rows in self.parts:
            for start in range(0, len(ids), size):
                stop = min(start + size, len(ids))
                vectors = self._read(path, inner, start, stop - start)
                mine = rows[(rows >= start) & (rows < stop)] - start
                if len(mine) == stop - start:
                    yield ids[start:stop], vectors
                else:
                    yield ids[start:stop][mine], vectors[mine]

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found_ids, found = [], []
        offset = 0
        for path, _, inner, ids, rows in self.parts:
            mine = positions[(positions >= offset) & (positions < offset + len(rows))] - offset
            if len(mine):
                local = rows[mine]
                found_ids.append(ids[local])
                if self._flat(path, inner):
                    found.append(_read_rows(path, local, self.d))
                else:
                    found.append(inner.reconstruct_batch(local.astype(np.int64)))
            offset += len(rows)
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, self.d), np.float32)
        return np.concatenate(found_ids), np.vstack(found)


def _read_rows(path: Path, rows: np.ndarray, dimension: int) -> np.ndarray:
    """The vectors at these positions of a flat file, one read each."""
    found = np.empty((len(rows), dimension), dtype=np.float32)
    size = 4 * dimension
    descriptor = os.open(path, os.O_RDONLY)
    try:
        for i, row in enumerate(rows.tolist()):
            found[i] = np.frombuffer(os.pread(descriptor, size, FLAT_DATA_AT + size * row), dtype=np.float32)
    finally:
        os.close(descriptor)
    return found


def write_compressed(path: Path, sources: Sources, target: str, params: dict,
                     chunk: int | None = None) -> tuple[faiss.Index, dict, faiss.Index]:
    """Code the live vectors of `sources` as one segment of `target` (sq8 or ivfpq), written to `path`, tuned.

    -> (the segment as read back from `path`, mapped: a searcher's view; its params; the empty trained
    codebook for later segments). The caller fsyncs nothing more: the file is fsynced here."""
    count, d = sources.count, sources.d
    rng = np.random.default_rng(0)
    sample_size = min(count, TRAIN_SAMPLE + compressed.TRAIN_PER_LIST * int(math.sqrt(max(count, 1))))
    sample_ids, sample = sources.rows(np.sort(rng.choice(count, sample_size, replace=False)))
    empty = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    built, trained = compressed.build(target, empty, sample, {}, True, count=count)
    refine = faiss.downcast_index(built.index)
    base = faiss.downcast_index(refine.base_index)
    codebook = _codebook(base, refine.k_factor)
    queries, _ = ann.recall_sample(sample_ids, sample)
    del sample
    best = ExactTop(queries, 10)
    all_ids = []
    for ids, vectors in sources.chunks(chunk):  # codes, ids and the exact answers, a chunk at a time
        base.add(vectors)
        best.add(vectors, ids)
        all_ids.append(ids)
    all_ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
    places = _write_file(path, base, refine.k_factor, sources, all_ids, chunk)
    del base, refine, built
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    truth, kth = best.answers()
    params = ann.tune_compressed(index, target, {**trained, "requested": params.get("requested", target)},
                                 queries, truth, kth)
    _set_depth_in_file(path, index, target, places)
    return index, params, codebook


def _codebook(base: faiss.Index, k_factor: float) -> faiss.Index:
    """An empty copy of the trained codes, as indexer.store.segments.codebook_of makes one."""
    empty = faiss.clone_index(base)
    empty.reset()
    refine = faiss.IndexRefineFlat(empty)
    refine.k_factor = k_factor
    return faiss.IndexIDMap2(refine)


class ExactTop:
    """The exact top k of `queries` over vectors seen a chunk at a time (`ids` and `scores`, best first)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = np.ascontiguousarray(queries, dtype=np.float32), k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if not len(ids):
            return
        scores, rows = faiss.knn(self.queries, np.ascontiguousarray(vectors), min(self.k, len(ids)),
                                 faiss.METRIC_INNER_PRODUCT)
        scores = np.concatenate([self.scores, scores], axis=1)
        found = np.concatenate([self.ids, np.where(rows >= 0, ids[rows], -1)], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :self.k]
        self.scores, self.ids = np.take_along_axis(scores, order, 1), np.take_along_axis(found, order, 1)

    def answers(self) -> tuple[list[set[int]], np.ndarray]:
        """As ann.exact_neighbours returns them: the ids per query, and the k-th score per query."""
        found = [{int(i) for i in row if i >= 0} for row in self.ids]
        valid = np.where(self.ids >= 0, self.scores, np.inf)
        return found, valid.min(axis=1)


def _write_file(path: Path, base: faiss.Index, k_factor: float, sources: Sources, ids: np.ndarray,
                chunk: int | None) -> dict:
    """IndexIDMap2(IndexRefineFlat(base, the float32 of `sources`)) as faiss.write_index lays it out:
    "IxM2" header, "IxRF" header, the codes (FAISS writes them), "IxFI" header and the float32 vectors
    (copied from the sources a chunk at a time), k_factor, the ids. -> where the depth fields lie."""
    count, d = len(ids), sources.d
    try:
        with open(path, "wb") as out:
            out.write(b"IxM2" + _header(d, count) + b"IxRF" + _header(d, count))
            codes_at = out.tell()
            out.flush()
            faiss.write_index(base, faiss.PyCallbackIOWriter(out.write))
            out.write(b"IxFI" + _header(d, count) + struct.pack("<Q", count * d))
            written = 0
            for part_ids, vectors in sources.chunks(chunk):
                out.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                written += len(part_ids)
            if written != count:  # the files changed under the build: never write a wrong segment
                raise RuntimeError(f"internal error: {written} vectors copied, {count} coded")
            k_factor_at = out.tell()
            out.write(struct.pack("<f", k_factor) + struct.pack("<Q", count) + ids.tobytes())
            out.flush()
            os.fsync(out.fileno())
    except BaseException as error:
        path.unlink(missing_ok=True)
        if isinstance(error, OSError) and integrity.no_space(path.parent, error):
            raise integrity.disk_full(path.parent) from None
        raise
    return {"codes_at": codes_at, "k_factor_at": k_factor_at}


def _set_depth_in_file(path: Path, index: faiss.Index, target: str, places: dict) -> None:
    """Write the tuned depth (k_factor; ivfpq: nprobe) into the file, in place of the untuned one.

    nprobe lies in the IVF header right after its index header and nlist (write_ivf_header); each field
    is checked to hold the value written before it is replaced, so a layout FAISS changed fails loudly."""
    inner = faiss.downcast_index(index.index)
    fields = [(places["k_factor_at"], "<f", None, float(inner.k_factor))]
    if target == "ivfpq":
        ivf = faiss.downcast_index(inner.base_index)
        at = places["codes_at"] + 4 + len(_header(0, 0))
        fields.append((at + 8, "<Q", (at, ivf.nlist), int(ivf.nprobe)))
    with open(path, "r+b") as handle:
        for offset, layout, guard, value in fields:
            if guard is not None:
                handle.seek(guard[0])
                if struct.unpack("<Q", handle.read(8))[0] != guard[1]:
                    raise RuntimeError(f"internal error: {path} does not hold nlist where FAISS 1.x writes it")
            handle.seek(offset)
            handle.write(struct.pack(layout, value))
        handle.flush()
        os.fsync(handle.fileno())


def streams(index_type: str, entries: int, dimension: int) -> bool:
    """Does a build of `entries` entries keep its float32 vectors on disk? sq8 and ivfpq builds do, and an
    auto build that will pick ivfpq for that many (each entry gives at least one vector)."""
    if index_type in compressed.COMPRESSED:
        return True
    chosen = ann.choose(index_type, entries, "flat", dimension, compressed.machine_memory())
    return index_type == "auto" and chosen in compressed.COMPRESSED

"""Compressed vector index types, for collections whose float32 vectors do not fit in memory: sq8, ivfpq.

Both are an IndexRefineFlat under the id map: candidates are found on compressed codes, then the
best `k_factor` x k of them are re-scored exactly against the float32 vectors kept beside the codes.
    sq8    8-bit scalar quantization (IndexScalarQuantizer QT_8bit, a quarter of float32), scanned whole;
           the search depth is k_factor.
    ivfpq  IVF lists (about sqrt(n)) of product-quantized codes (PQ_BYTES bytes a vector); the search
           depth is nprobe, with K_FACTOR candidates per result re-scored. From FAST_SCAN_MIN training
           points the codes are 4-bit "fast-scan" ones (two dimensions a code, scanned 32 at a time
           in SIMD registers): at 10M synthetic vectors they reach recall@10 0.980 in 8.8 ms a search
           where 8-bit codes of the same size needed ~125 ms for 0.983 (bench/scale.py, README).
A searcher maps the FAISS file (IO_FLAG_MMAP_IFC: `load_flag`), so the float32 vectors (and the
sq8 codes) stay on disk, in the page cache that every process on the machine shares; only the
candidates' rows are read. A build streams them from disk (indexer.store.streamed); `finish` on an
index in memory rebuilds from the stored vectors to delete (IndexRefine cannot remove in place), with
the same centroids unless the size changed 4x. This module does not tune (indexer.store.ann does, with
`steps` and `set_depth`) or write files.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

COMPRESSED = ("sq8", "ivfpq")
# one byte per 4 dimensions at 384: 96 B a vector, 1 GB at 10M (8-bit codes from 10k vectors up). 48 B
# (8 dimensions a byte) ranked too coarsely: at 1M synthetic vectors recall@10 stopped at 0.68 with 160
# candidates re-scored and needed 2,560 for 0.96 (bench/scale.py)
PQ_BYTES = 96
K_FACTOR = 16  # ivfpq: candidates re-scored per result wanted (PQ ranks too coarsely for fewer)
# ivfpq tuning tries each: more re-scored, fewer lists to scan (ann._tune_ivfpq). 256: at 10M vectors mixed
# from real reviews, real questions' recall@10 stopped at 0.933 with 128 re-scored and reached 0.964 with 256
# (bench/bigbuild.py --real)
K_FACTORS = (16, 32, 64, 128, 256)
FAST_SCAN_MIN = 1000  # training points for 4-bit fast-scan codes; fewer: 8-bit (or fewer bits) IndexIVFPQ
K_FACTOR_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
TRAIN_PER_LIST = 40
# auto picks ivfpq above this many vectors when float32 plus an HNSW graph would take more than
# MEMORY_SHARE of the machine's memory: never for small collections.
COMPRESS_MIN = 1_000_000
MEMORY_SHARE = 0.5


def compressed_kind(inner: faiss.Index) -> str | None:
    """sq8 or ivfpq for an IndexRefine over those codes, else None."""
    if not isinstance(inner, faiss.IndexRefine):
        return None
    base = faiss.downcast_index(inner.base_index)
    return "ivfpq" if isinstance(base, (faiss.IndexIVFPQ, faiss.IndexIVFPQFastScan)) else "sq8"


def too_big(count: int, dimension: int, memory: int) -> bool:
    """Would `count` float32 vectors and their HNSW graph (~M=32 links of 8 bytes) exceed the memory share?"""
    return count > COMPRESS_MIN and count * (4 * dimension + 2 * 32 * 8) > MEMORY_SHARE * memory


def machine_memory() -> int:
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def build(target: str, old: faiss.Index, vectors: np.ndarray, params: dict, retrain: bool,
          count: int | None = None) -> tuple[faiss.Index, dict]:
    """An empty, trained index of `target` (the caller adds): new codes when `retrain`, else `old`'s emptied.
    `vectors`: all the vectors, or a sample of the `count` to be added (a streamed build)."""
    if not retrain and compressed_kind(faiss.downcast_index(old.index)) == target:
        inner = faiss.clone_index(faiss.downcast_index(old.index))
        inner.reset()
        inner.k_factor = float(K_FACTOR if target == "ivfpq" else inner.k_factor)  # tuning starts again
        kept = ("nlist", "trained_on", "pq_bytes", "pq_bits", "fast_scan", "nprobe")
        return faiss.IndexIDMap2(inner), {name: params[name] for name in kept if name in params}
    dimension, count = old.d, count or len(vectors)
    if target == "sq8":
        base = faiss.IndexScalarQuantizer(dimension, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        trained = {"trained_on": count}
    else:
        nlist = max(1, min(int(math.sqrt(max(count, 1))), count // TRAIN_PER_LIST or 1))
        points = len(vectors)
        if points >= FAST_SCAN_MIN:
            pq = _pq_bytes(dimension, per_code=2)
            base = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(dimension), dimension, nlist, pq, 4,
                                            faiss.METRIC_INNER_PRODUCT)
            trained = {"nlist": nlist, "pq_bytes": pq // 2, "pq_bits": 4, "fast_scan": True, "trained_on": count}
        else:
            pq = _pq_bytes(dimension)
            bits = max(1, min(8, int(math.log2(max(points, 2) / TRAIN_PER_LIST)) if points > 2 * TRAIN_PER_LIST else 1))
            base = faiss.IndexIVFPQ(faiss.IndexFlatIP(dimension), dimension, nlist, pq, bits, faiss.METRIC_INNER_PRODUCT)
            trained = {"nlist": nlist, "pq_bytes": pq, "pq_bits": bits, "trained_on": count}
        base.cp.seed = 1234
    sample = vectors
    wanted = max(TRAIN_PER_LIST * trained.get("nlist", 1), 256 * TRAIN_PER_LIST)
    if len(vectors) > wanted:
        sample = vectors[np.sort(np.random.default_rng(0).choice(len(vectors), wanted, replace=False))]
    if len(vectors):
        base.train(np.ascontiguousarray(sample, dtype=np.float32))
    inner = faiss.IndexRefineFlat(base)
    inner.k_factor = 1 if target == "sq8" else K_FACTOR
    return faiss.IndexIDMap2(inner), trained


def _pq_bytes(dimension: int, per_code: int = 4) -> int:
    """The most sub-quantizers, up to PQ_BYTES x 8 / bits and of at least `per_code` dimensions each,
    that divide `dimension` (8-bit codes: 4 dimensions each; 4-bit fast-scan codes: 2).

    _pq_bytes(384) -> 96, _pq_bytes(64) -> 16, _pq_bytes(384, per_code=2) -> 192"""
    most = PQ_BYTES * 4 // per_code
    return max(m for m in range(1, max(1, min(most, dimension // per_code)) + 1) if dimension % m == 0)


def fits_training(count: int, params: dict, growth: int) -> bool:
    """False when the collection grew or shrank `growth` times from the size the codes were trained on."""
    trained = params.get("trained_on", 0)
    return trained and trained // growth <= count <= growth * trained


def steps(target: str, params: dict) -> list[int]:
    if target == "sq8":
        return list(K_FACTOR_STEPS)
    nlist = params["nlist"]
    from indexer.store.ann import NPROBE_STEPS

    return [p for p in NPROBE_STEPS if p <= nlist] + [nlist]


def set_depth(inner: faiss.Index, target: str, step: int) -> None:
    if target == "sq8":
        inner.k_factor = float(step)
    else:
        faiss.downcast_index(inner.base_index).nprobe = int(step)


def depth_name(target: str) -> str:
    return "k_factor" if target == "sq8" else "nprobe"


def load_flag(index_type: str) -> int:
    """faiss.read_index flags for a searcher: compressed types map their codes and float32 vectors."""
    return faiss.IO_FLAG_MMAP_IFC if index_type in COMPRESSED else 0

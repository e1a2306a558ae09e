"""Vector index types: exact search (flat), a graph (HNSW), inverted lists (IVF), or compressed codes
re-scored exactly (sq8, ivfpq: indexer.store.ann_compressed), over unit vectors.

Every index is an IndexIDMap2 (FAISS ids = passage ids) over an inner-product index. The writer
adds vectors as it goes and hands deletions to `finish` at commit, which then: removes them (flat
removes in place; HNSW cannot, IVF-in-IDMap cannot safely, so both are rebuilt from their stored
vectors, which they keep exactly), switches type when `auto` asks for it as the collection grows
or shrinks, (re)trains IVF, and for an ANN index raises its search depth until recall@10 against
exact search reaches TUNE_TARGET (0.99) on sample questions made from stored vectors (`recall_sample`), checked
on held-out ones; an IVF index that would need all its lists, or an `auto` HNSW index no faster than exact
search, becomes flat (its parameters' `note` says why). `finish` returns the index and the parameters the
manifest records. This module does not embed, read input or write files.
"""

from __future__ import annotations

import math
import time

import faiss
import numpy as np

from indexer.errors import BertdexError
from indexer.store import ann_compressed as compressed
from indexer.store.ann_compressed import COMPRESSED

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", *COMPRESSED)
AUTO_FLAT_MAX = 20_000  # auto: exact search up to here (about 1.5 ms a question on 2 cores), HNSW above
RECALL_TARGET = 0.98  # what an ANN index must keep
TUNE_TARGET = 0.99  # what tuning asks of its sample
# The compressed types' sample depth is multiplied by this margin (their questions came out easier than real
# ones: on the 1M IVF index the sample asked for nprobe 24, where real questions needed 128 for 0.98).
DEPTH_MARGIN = {"sq8": 2, "ivfpq": 6}
# HNSW and IVF: one step deeper than half the sample needs, then as deep as the held-out half needs (`_tune`).
# The x4 (HNSW) and x6 (IVF) margins they had ended IVF at all its lists (nprobe 316 of 316 at 100k, slower
# than flat) and HNSW at efSearch 384 where real questions needed 128.
DEPTH_MARGIN_STEPS = 1
RECALL_SAMPLE = 600  # three kinds of 200 (`recall_sample`), half to tune on, half held out
HNSW_M = 32
# efConstruction 200 rather than 80: at 100k real entries, English questions' recall@10 plateaued at
# 0.975 with 80 (efSearch up to 768, 2.4 ms) and reached 0.984 at efSearch 192 (0.7 ms) with 200;
# building took 44 s at 100k on 2 cores (bench/latency.py)
HNSW_EF_CONSTRUCTION = 200
EF_SEARCH_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)
# past 512 for the IVF lists of millions of vectors (ivfpq: 3,162 at 10M), so the held-out half's last steps
# are not 512 then all of them
NPROBE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072)
TIE = 1e-3  # a returned entry within this of the k-th exact score counts (ann-benchmarks k-nn recall, epsilon 1e-3)
TOMBSTONE = -1  # the id of a vector deleted from an HNSW graph that is not rebuilt yet
# An HNSW index is rebuilt at the commit that would leave more than this share of its graph deleted;
# below, deletions are tombstones (a full rebuild took 48 s at 100k and 755 s at 1M here).
REBUILD_SHARE = 0.1
_LIVE = faiss.IDSelectorRange(0, 2**62)  # every id but TOMBSTONE
FEW_QUERIES = 4  # searches of up to this many queries run on one thread
IVF_LISTS_PER_ROOT = 4  # IVF lists: this many times sqrt(n) (see _trained_ivf)
IVF_RETRAIN_GROWTH = 4  # retrain IVF centroids once the collection is this many times the trained size


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """index.search, on one OpenMP thread for a few queries: a single question gains nothing from more
    (the id map's remap loop is the only parallel part), and on a busy machine each parallel region
    waits for a core (2 cores at load 6: 10 ms per search of a 50-vector index, 0.05 ms on one thread)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, index.d)
    threads = faiss.omp_get_max_threads()
    few = len(queries) <= FEW_QUERIES and threads > 1
    if few:
        faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k, params=_live_only(index))
    finally:
        if few:
            faiss.omp_set_num_threads(threads)


def _live_only(index: faiss.Index):
    """Search parameters that skip an HNSW index's tombstones (its own efSearch kept), else None."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else None
    if not isinstance(inner, faiss.IndexHNSW):
        return None
    params = faiss.SearchParametersHNSW()
    params.efSearch = inner.hnsw.efSearch
    params.sel = _LIVE
    return params


def check_index_type(index_type: str) -> str:
    if index_type not in INDEX_TYPES:
        raise BertdexError(f"unknown index type {index_type!r}: choose one of {', '.join(INDEX_TYPES)}")
    return index_type


def requested_type(index_type: str, params: dict) -> str:
    """What the user asked for: `auto` is kept in params while index_type names the built type."""
    return check_index_type(params.get("requested") or index_type)


def new_index(index_type: str, dimension: int, params: dict) -> faiss.Index:
    """An empty index to add vectors to. IVF and auto start flat: `finish` builds them at commit."""
    if requested_type(index_type, params) == "hnsw":
        return _empty_hnsw(dimension, params)
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def kind(index: faiss.Index) -> str:
    """flat, hnsw, ivf, sq8 or ivfpq: the structure under the id map."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
    if compressed.compressed_kind(inner):
        return compressed.compressed_kind(inner)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def stored(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every live stored vector, in insertion order; all three types keep them exactly."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if index.ntotal == 0:
        return ids, np.zeros((0, index.d), dtype=np.float32)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        inner.make_direct_map()  # ids inside the IVF are positions: the id map is never compacted for IVF
    vectors = inner.reconstruct_n(0, index.ntotal)
    live = ids != TOMBSTONE
    return (ids, vectors) if live.all() else (ids[live], vectors[live])


def vectors_of(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """The stored float32 vectors of these FAISS ids, [len(ids), d] (IVF gets its direct map at the first
    call; compressed types give their exact re-scoring copy). An id the map lacks raises RuntimeError."""
    if hasattr(index, "vectors_of"):  # indexer.store.segments.SegmentSet: each id from its segment
        return index.vectors_of(ids)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF) and inner.direct_map.type == faiss.DirectMap.NoMap:
        inner.make_direct_map()
    if len(ids) == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return np.stack([index.reconstruct(int(i)) for i in ids])


def tombstones(index: faiss.Index) -> int:
    """How many vectors of an HNSW index are deleted but still in its graph (0 for the other types)."""
    if kind(index) != "hnsw":
        return 0
    return int(np.count_nonzero(faiss.vector_to_array(index.id_map) == TOMBSTONE))


def live_count(index: faiss.Index) -> int:
    return int(index.ntotal) - tombstones(index)


def _bury(index: faiss.Index, removed: np.ndarray) -> None:
    """Delete `removed` from an HNSW index without rebuilding its graph: their ids become TOMBSTONE,
    which searches skip (`search`) and a later rebuild drops."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    ids[np.isin(ids, removed)] = TOMBSTONE
    faiss.copy_array_to_vector(ids, index.id_map)
    index.construct_rev_map()


def choose(requested: str, count: int, current: str, dimension: int = 0, memory: int = 0) -> str:
    """The type to build for `count` vectors. auto: flat up to AUTO_FLAT_MAX, HNSW above; an HNSW index
    goes back to flat only below half of that, so a collection near the line does not flip every commit.
    Past COMPRESS_MIN vectors whose float32 and graph would take over half of `memory`: ivfpq.

    choose("auto", 5_000, "flat") -> "flat"; choose("auto", 15_000, "hnsw") -> "hnsw"
    """
    if requested != "auto":
        return requested
    if memory and (compressed.too_big(count, dimension, memory)
                   or (current == "ivfpq" and compressed.too_big(2 * count, dimension, memory))):
        return "ivfpq"
    line = AUTO_FLAT_MAX // 2 if current == "hnsw" else AUTO_FLAT_MAX
    return "flat" if count <= line else "hnsw"


def finish(index: faiss.Index, index_type: str, params: dict, removed: np.ndarray) -> tuple[faiss.Index, str, dict]:
    """At commit: apply `removed` ids, build the type asked for, tune an ANN index. -> (index, type, params)."""
    requested = requested_type(index_type, params)
    removed = np.asarray(removed, dtype=np.int64)
    current = kind(index)
    buried = tombstones(index)
    leaving = int(np.isin(faiss.vector_to_array(index.id_map), removed).sum()) if removed.size else 0
    count = index.ntotal - buried - leaving
    target = choose(requested, count, current, index.d, compressed.machine_memory())
    if current == target == "flat":
        if removed.size:
            index.remove_ids(removed)
        return index, "flat", {"requested": requested}
    if current == target == "hnsw" and leaving and buried + leaving <= REBUILD_SHARE * index.ntotal:
        _bury(index, removed)
        removed = np.zeros(0, dtype=np.int64)
    retrain = target == "ivf" and (current != "ivf" or count > IVF_RETRAIN_GROWTH * params.get("trained_on", 0)
                                   or count < params.get("trained_on", 0) // IVF_RETRAIN_GROWTH)
    if target in COMPRESSED:
        retrain = current != target or not compressed.fits_training(count, params, IVF_RETRAIN_GROWTH)
    if current != target or removed.size or retrain:
        ids, vectors = stored(index)
        if removed.size:
            keep = ~np.isin(ids, removed)
            ids, vectors = ids[keep], vectors[keep]
        index, params = _build(target, index, ids, vectors, params, retrain)
    index, target, params = _tune(index, target, {**params, "requested": requested})
    buried = tombstones(index)
    return index, target, ({**params, "tombstones": buried} if buried else params)


def _build(target: str, old: faiss.Index, ids: np.ndarray, vectors: np.ndarray, params: dict, retrain: bool):
    dimension = old.d
    if target in COMPRESSED:
        index, params = compressed.build(target, old, vectors, params, retrain)
    elif target == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        params = {}
    elif target == "hnsw":
        index = _empty_hnsw(dimension, params)
        params = {"M": params.get("M", HNSW_M), "ef_construction": params.get("ef_construction", HNSW_EF_CONSTRUCTION)}
    else:
        if retrain:
            index, params = _trained_ivf(dimension, vectors, params)
        else:  # same centroids, lists emptied
            inner = faiss.clone_index(faiss.downcast_index(old.index))
            inner.reset()
            index = faiss.IndexIDMap2(inner)
            params = {name: params[name] for name in ("nlist", "trained_on") if name in params}
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors), ids)
    return index, params


def _empty_hnsw(dimension: int, params: dict) -> faiss.Index:
    inner = faiss.IndexHNSWFlat(dimension, int(params.get("M", HNSW_M)), faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = int(params.get("ef_construction", HNSW_EF_CONSTRUCTION))
    inner.hnsw.efSearch = int(params.get("ef_search", 64))
    index = faiss.IndexIDMap2(inner)
    return index


def _trained_ivf(dimension: int, vectors: np.ndarray, params: dict):
    """IVF with about 4 sqrt(n) lists (at least 39 training points each), k-means on 40 points per list.

    4 sqrt(n), not sqrt(n): at 100k (bench/latency.py's vectors, the tuning sample's questions) recall@10
    0.99 needed nprobe 64 of 316 lists (23,756 vectors compared, p50 8.6-18 ms on one thread, flat 30-42 ms)
    and nprobe 64 of 1,264 (7,412 compared, 0.8 ms); 2,529 lists gained nothing more (nprobe 96, 0.7-0.9
    ms) for twice the k-means. Training costs 16 times sqrt(n)'s (45 s against 5-7 s at 100k, load 7)."""
    count = len(vectors)
    nlist = int(params.get("nlist") or max(1, min(IVF_LISTS_PER_ROOT * int(math.sqrt(max(count, 1))), count // 39)))
    nlist = max(1, min(nlist, max(count, 1)))
    quantizer = faiss.IndexFlatIP(dimension)
    inner = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = vectors
    if count > 40 * nlist:
        rows = np.random.default_rng(0).choice(count, 40 * nlist, replace=False)
        sample = vectors[np.sort(rows)]
    inner.cp.seed = 1234
    if count:
        inner.train(np.ascontiguousarray(sample))
    index = faiss.IndexIDMap2(inner)
    return index, {"nlist": nlist, "trained_on": count}


def _tune(index: faiss.Index, target: str, params: dict) -> tuple[faiss.Index, str, dict]:
    """The search depth (efSearch / nprobe / ...) for recall@10 >= TUNE_TARGET against exact search.

    HNSW and IVF: the smallest step whose recall reaches the target on half the sample, one step deeper
    (the margin), and deeper still until the other, held-out half reaches it too. IVF never searches all
    its lists: if the sample needs them, exact search is as good, and the index becomes flat (`note` says
    why); so does an `auto` index that answers no faster than exact search, timed here (`_faster_than_flat`).
    The compressed types keep DEPTH_MARGIN x the depth the whole sample needs (at most the last step)."""
    if target == "flat":
        return index, target, params
    inner = faiss.downcast_index(index.index)
    if target == "hnsw":
        params = {**params, "M": int(inner.hnsw.nb_neighbors(1)), "ef_construction": int(inner.hnsw.efConstruction)}
    ids, vectors = stored(index)
    if len(ids) == 0:
        return index, target, {**params, "recall_at_10": 1.0, "recall_sample": 0}
    queries, exclude = recall_sample(ids, vectors)
    if target in COMPRESSED:
        truth, kth = exact_neighbours(vectors, queries, ids, 10, exclude=exclude)
        return index, target, tune_compressed(index, target, params, queries, truth, kth, exclude)
    steps = list(EF_SEARCH_STEPS) if target == "hnsw" else [p for p in NPROBE_STEPS if p < params["nlist"]] or [1]
    return _tune_held_out(index, inner, target, params, steps, ids, vectors, queries, exclude)


def tune_compressed(index: faiss.Index, target: str, params: dict, queries: np.ndarray, truth: list[set[int]],
                    kth: np.ndarray, exclude: np.ndarray | None = None) -> dict:
    """sq8: the smallest k_factor whose recall@10 on `queries` (exact answers `truth`, k-th scores `kth`)
    reaches TUNE_TARGET, times DEPTH_MARGIN. ivfpq has two depths, lists scanned (nprobe) and candidates
    re-scored per result (k_factor): `_tune_ivfpq` takes the pair that answers fastest.
    Sets the depth on `index`; returns `params` with it (a streamed build tunes here without `stored`)."""
    inner = faiss.downcast_index(index.index)

    def measure(part: slice = slice(None)) -> float:
        return recall_at(index, queries[part], truth[part], 10, exclude=None if exclude is None else exclude[part],
                         kth=kth[part])

    if target == "ivfpq":
        return {**params, **_tune_ivfpq(inner, params["nlist"], measure, len(queries))}
    steps = compressed.steps(target, params)
    chosen, recall = steps[-1], 0.0
    for step in dict.fromkeys(steps):
        _set_depth(inner, target, step)
        recall = measure()
        chosen = step
        if recall >= TUNE_TARGET:
            break
    sampled = chosen
    chosen = min(steps[-1], DEPTH_MARGIN[target] * sampled)
    if chosen != sampled:
        _set_depth(inner, target, chosen)
        recall = measure()
    name = compressed.depth_name(target)
    return {**params, name: chosen, f"sample_{name}": sampled, "recall_at_10": round(recall, 4),
            "recall_sample": len(queries)}


def _tune_ivfpq(inner: faiss.Index, nlist: int, measure, sample: int) -> dict:
    """ivfpq's depth, as IVF's (`_tune_held_out`) for each k_factor of compressed.K_FACTORS: the fewest lists
    whose recall reaches TUNE_TARGET on half the sample, one step more, and more until the held-out half
    reaches it too. More candidates re-scored need fewer lists, so each k_factor searches among the lists
    the previous one needed. Each pair is timed on the whole sample; the fastest is kept (the smaller
    k_factor within 10%). Scanning every list is what it comes to only when no k_factor reaches the
    target with fewer; the params then say so (`note`).

    Before, nprobe rose to all the lists at k_factor 16 before k_factor rose, then x6: a 2M index of
    Gaussian-blob vectors ended at 1,414 of 1,414 lists, 12 ms a question (bench/writes.py)."""
    base = faiss.downcast_index(inner.base_index)
    steps = list(dict.fromkeys([p for p in NPROBE_STEPS if p < nlist] + [nlist]))
    tuning, held_out = slice(0, None, 2), slice(1, None, 2)

    def reaches(part: slice, position: int) -> bool:
        base.nprobe = steps[position]
        return measure(part) >= TUNE_TARGET

    tried, upper = [], len(steps) - 1  # (seconds for the sample, k_factor, sampled nprobe, nprobe, recall)
    for k_factor in compressed.K_FACTORS:
        inner.k_factor = float(k_factor)
        if not reaches(tuning, upper):
            continue  # not even with the lists the previous k_factor needed
        low, high = 0, upper  # the fewest lists that reach it: recall grows with nprobe
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if reaches(tuning, middle) else (middle + 1, high)
        upper, position = high, min(high + DEPTH_MARGIN_STEPS, len(steps) - 1)
        while not reaches(held_out, position) and position < len(steps) - 1:
            position += 1
        base.nprobe = steps[position]
        started = time.perf_counter()
        recall = measure()
        tried.append((time.perf_counter() - started, k_factor, steps[high], steps[position], recall))
        if high == 0 or (len(tried) > 1 and tried[-2][2] == steps[high]):
            break  # no fewer lists than with fewer candidates: more candidates can only cost more
    if not tried:  # nothing reaches it: the deepest pair there is
        inner.k_factor, base.nprobe = float(compressed.K_FACTORS[-1]), nlist
        tried.append((0.0, compressed.K_FACTORS[-1], nlist, nlist, measure()))
    # a pair scanning no fewer lists than one re-scoring fewer candidates costs more whatever the timing says:
    # only pairs that trade lists for candidates are timed against each other (so equal vectors tune alike)
    tried = [pair for pair in tried if not any(other[1] < pair[1] and other[3] <= pair[3] for other in tried)]
    fastest = min(seconds for seconds, *_ in tried)
    _, k_factor, sampled, nprobe, recall = next(pair for pair in tried if pair[0] <= 1.1 * fastest)
    inner.k_factor, base.nprobe = float(k_factor), nprobe
    found = {"k_factor": float(k_factor), "nprobe": nprobe, "sample_nprobe": sampled, "recall_at_10": round(recall, 4),
             "recall_sample": sample}
    if nprobe == nlist:
        found["note"] = (f"ivfpq scans all {nlist} lists for recall@10 {TUNE_TARGET} on its sample questions, even "
                         f"with {k_factor} candidates re-scored per result: every code is read (not the float32 vectors)")
    return found


def _tune_held_out(index, inner, target: str, params: dict, steps: list[int], ids, vectors, queries, exclude):
    """_tune for HNSW and IVF: tuned on the even sample questions, checked on the odd ones (see _tune)."""
    halves = [(queries[part::2], exclude[part::2]) for part in (0, 1)]
    truths = [exact_neighbours(vectors, q, ids, 10, exclude=e) for q, e in halves]

    def recall(half: int, step: int) -> float:
        _set_depth(inner, target, step)
        (q, e), (truth, kth) = halves[half], truths[half]
        return recall_at(index, q, truth, 10, exclude=e, kth=kth)

    position = next((i for i, step in enumerate(steps) if recall(0, step) >= TUNE_TARGET), len(steps) - 1)
    sampled = steps[position]
    position = min(position + DEPTH_MARGIN_STEPS, len(steps) - 1)
    held_out = recall(1, steps[position])
    while held_out < TUNE_TARGET and position < len(steps) - 1:
        position += 1
        held_out = recall(1, steps[position])
    chosen = steps[position]
    name = "ef_search" if target == "hnsw" else "nprobe"
    tuned = {**params, name: chosen, f"sample_{name}": sampled, "recall_at_10": round(held_out, 4),
             "recall_sample": len(queries)}
    requested = params.get("requested")
    if target == "ivf" and held_out < TUNE_TARGET:
        return _as_flat(ids, vectors, requested, f"ivf reached recall@10 {held_out:.3f} at nprobe {chosen} of "
                        f"{params['nlist']} lists on held-out sample questions: only all lists (exact search) reach "
                        f"{TUNE_TARGET}, so the index is flat")
    if requested == "auto":  # an asked-for type is kept (on small test sets IVF and HNSW are often slower)
        ann_ms, flat_ms = _faster_than_flat(index, vectors, halves[1][0])
        if ann_ms >= flat_ms:
            return _as_flat(ids, vectors, requested, f"{target} at {name} {chosen} took {ann_ms:.2f} ms a question, "
                            f"exact search {flat_ms:.2f} ms: flat")
    return index, target, tuned


def _faster_than_flat(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray) -> tuple[float, float]:
    """(ms a question on `index`, ms on exact search of `vectors`), one question at a time, best of 3 rounds."""
    import time

    queries = np.ascontiguousarray(queries[:32], dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rounds = {"ann": [], "flat": []}
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as `search` runs a question
    try:
        for _ in range(3):
            for name in rounds:
                start = time.perf_counter()
                for query in queries:
                    if name == "ann":
                        index.search(query[None, :], 10, params=_live_only(index))
                    else:
                        faiss.knn(query[None, :], vectors, 10, faiss.METRIC_INNER_PRODUCT)
                rounds[name].append((time.perf_counter() - start) * 1000 / len(queries))
    finally:
        faiss.omp_set_num_threads(threads)
    return min(rounds["ann"]), min(rounds["flat"])


def _as_flat(ids: np.ndarray, vectors: np.ndarray, requested: str | None, note: str):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return index, "flat", {"requested": requested, "note": note}


def recall_sample(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Questions to tune on, and the id each must not count (-1: none): stored vectors turned toward another,
    random stored vector, to cosine 0.9, 0.8 and 0.7 with the first (a third each).

    A real question sits near an entry but also leans toward the rest of the collection, not off it at
    random. On 30k real entries (bench/latency.py's, MiniLM) and its 200 real questions, HNSW needed
    efSearch 128 for 0.99; these questions needed 64 (0.9), 128 (0.8) and 128 (0.7), where the questions
    used before (a stored vector, or one turned by a random angle) needed 24, so a x4 margin was added.
    IVF (173 lists): real questions 96, these 64, 64 and 48.
    """
    rng = np.random.default_rng(0)
    third = min(RECALL_SAMPLE // 3, len(ids))
    rows = rng.choice(len(ids), 3 * third, replace=len(ids) < 3 * third)
    base = vectors[rows].astype(np.float32)
    toward = vectors[rng.integers(0, len(ids), len(rows))].astype(np.float32)
    turn = toward - np.sum(toward * base, axis=1, keepdims=True) * base
    norms = np.linalg.norm(turn, axis=1, keepdims=True)
    random = rng.standard_normal(base.shape).astype(np.float32)  # toward itself (a duplicate): a random turn
    random -= np.sum(random * base, axis=1, keepdims=True) * base
    turn = np.where(norms > 1e-3, turn, random)
    turn /= np.clip(np.linalg.norm(turn, axis=1, keepdims=True), 1e-12, None)
    cosine = np.tile(np.asarray([0.9, 0.8, 0.7], dtype=np.float32), third)[:, None]
    queries = cosine * base + np.sqrt(1 - cosine**2) * turn
    queries /= np.clip(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12, None)
    return queries.astype(np.float32), np.full(len(queries), -1, dtype=np.int64)


def _set_depth(inner: faiss.Index, target: str, step: int) -> None:
    if target in COMPRESSED:
        compressed.set_depth(inner, target, step)
    elif target == "hnsw":
        inner.hnsw.efSearch = int(step)
    else:
        inner.nprobe = int(step)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int,
                     exclude: np.ndarray | None = None) -> tuple[list[set[int]], np.ndarray]:
    """Ids of the k largest inner products per query (leaving out exclude[i], the query's own id),
    and the k-th largest score per query (for `recall_at`'s ties)."""
    extra = 1 if exclude is not None else 0
    scores, positions = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(vectors),
                                  min(k + extra, len(ids)), faiss.METRIC_INNER_PRODUCT)
    found, kth = [], np.full(len(queries), np.inf, dtype=np.float32)
    for i, row in enumerate(positions):
        kept = [(int(ids[p]), float(s)) for p, s in zip(row, scores[i])
                if p >= 0 and (exclude is None or ids[p] != exclude[i])][:k]
        found.append({key for key, _ in kept})
        if kept:
            kth[i] = kept[-1][1]
    return found, kth


def recall_at(index: faiss.Index, queries: np.ndarray, truth: list[set[int]], k: int,
              exclude: np.ndarray | None = None, kth: np.ndarray | None = None) -> float:
    """Share of the exact top-k ids that `index` returns in its own top-k. With `kth` (the k-th exact
    score per query), a returned id scoring at least that (within TIE) counts too: duplicate texts have
    equal vectors, and which of them fills the last places is arbitrary.

    recall_at(index, q, [{1, 2}], 2) -> 0.5 when the index returns ids 1 and 7
    """
    extra = 1 if exclude is not None else 0
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, found = index.search(queries, min(k + extra, index.ntotal), params=_live_only(index))
    hits = total = 0
    for i, row in enumerate(found):
        got = [int(x) for x in row if x >= 0 and (exclude is None or x != exclude[i])][:k]
        right = len(truth[i] & set(got))
        if kth is not None:
            right += sum(1 for x in got if x not in truth[i]
                         and float(queries[i] @ index.reconstruct(x)) >= kth[i] - TIE)
        hits += min(right, len(truth[i]))
        total += len(truth[i])
    return hits / total if total else 1.0

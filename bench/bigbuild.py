"""`bertdex index`'s own bulk load at 10M: the product's streamed build, its time, memory and disk.

    python bench/bigbuild.py --count 10000000            # ivfpq (what auto picks at 10M on 24 GB)
    python bench/bigbuild.py --count 10000000 --real     # vectors made from real review vectors
    python bench/bigbuild.py --count 2000000 --type sq8
    python bench/bigbuild.py --count 10000000 --real --retune   # a kept index: tune it again, as a build would
    python bench/bigbuild.py --count 10000000 --real --sweep    # a kept index: recall and p50 by depth

The model is left out (no machine here embeds 10M texts in a session): each entry's vector is made by
a SYNTHETIC embedder (bench/writes.py's vectors: 384 dimensions around 2,000 centres, the same ones on
every run) that takes the place of the encoder in `indexer.ingest.bulk.ingest`, the loop `bertdex
index` runs. Everything else is the product's, as `build_index` calls it: `streams()` decides,
IndexWriter.open(stream=True), entries written 128 at a time with their texts ("entry N about topic
T": SQLite rows and keyword terms), a checkpoint commit every 50,000 entries (each a flat segment
file, the float32 vectors spooled to disk past 65,536 in memory), and the last commit codes every
vector into one ivfpq/sq8 segment chunk by chunk (indexer.store.streamed), tuned on its sample.

--real: the vectors are bench/scale.py's instead: each a mix of two of 5,000 real nsmc review vectors
(multilingual-e5-small, embedded once and cached in bench/out/bigbuild/) plus noise, and the questions
are real (100 bertfaq-covidfaq user questions, 100 held-out reviews, embedded as questions). Without
it the clusters are Gaussian blobs whose members are near-equidistant, the hard case for IVF.

It runs in a fresh process and prints, in one JSON line: seconds (load and last commit apart), peak
RSS (VmHWM: mapped file pages count there) and the largest anonymous RSS seen (sampled every 0.2 s:
what the process itself holds), the folder's size, and then the built index as a Searcher opens it:
recall@10 of 200 questions (new points of the same centres) against their exact top 10 over all
COUNT vectors (collected as the vectors were made), and the vector search's p50 on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_name, largest_rss, peak_mb, rss_kinds  # noqa: E402
from bench.writes import CHUNK as BLOCK, DIMENSION, documents, manifest_for, synthetic  # noqa: E402

OUT = ROOT / "bench" / "out" / "bigbuild"
QUESTIONS = 200


def questions_for() -> np.ndarray:
    """New points near the centres: not stored vectors, so the exact top 10 is a real ranking."""
    centres = np.random.default_rng(7).standard_normal((2_000, DIMENSION)).astype(np.float32)
    rng = np.random.default_rng(99)
    points = centres[rng.integers(0, len(centres), QUESTIONS)]
    points += 0.8 * rng.standard_normal(points.shape).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def real_vectors() -> tuple[np.ndarray, np.ndarray]:
    """(5,000 real review vectors, 200 real question vectors), embedded once by the model `bertdex index`
    picks for the reviews (bench/scale.py's way), cached."""
    cached = OUT / "real-5000.npz"
    if not cached.exists():
        from bench.scale import DATA, reviews
        from indexer.embed.models import default_model
        from indexer.embed.resolve import resolve_recipe

        texts, asked = reviews(DATA, 5_000)
        resolved = resolve_recipe(default_model(texts), precision="fp32")
        recipe = resolved.recipe
        options = {"layer": recipe.layer, "pooling": recipe.pooling, "exclude_special": recipe.exclude_special,
                   "windows": False, "prefix": recipe.passage_prefix}
        real = np.concatenate([resolved.encoder.embed(texts[i:i + 256], **options).vectors
                               for i in range(0, len(texts), 256)])
        questions = resolved.encoder.embed(asked, **{**options, "prefix": recipe.query_prefix}).vectors
        OUT.mkdir(parents=True, exist_ok=True)
        np.savez(cached, real=real, questions=questions)
    found = np.load(cached)
    return found["real"].astype(np.float32), found["questions"].astype(np.float32)


def real_mix(start: int, count: int) -> np.ndarray:
    """bench/scale.py's vectors: two real review vectors mixed, noise added; the same ones on every run."""
    from bench.scale import mix

    real, _ = real_vectors()
    return mix(np.random.default_rng(10_000 + start // BLOCK), real, count)


class SyntheticEmbedder:
    """In place of the encoder: entry N's vector is made(N); the exact answers are kept as they go."""

    label = "synthetic (bench/bigbuild.py)"

    def __init__(self, questions: np.ndarray, count: int, made=synthetic):
        from indexer.store.streamed import ExactTop

        self.best, self.make, self.count = ExactTop(questions, 10), made, count
        self.made, self.block_start, self.block = 0, -1, None

    def _vectors(self, count: int) -> np.ndarray:
        parts = []
        while count:
            start = (self.made // BLOCK) * BLOCK
            if start != self.block_start:
                self.block_start, self.block = start, self.make(start, BLOCK)
                used = min(BLOCK, self.count - start)  # the entries there are: a block's tail may be past them
                self.best.add(self.block[:used], np.arange(start, start + used) + 1)  # passage ids from 1
            take = min(count, start + BLOCK - self.made)
            parts.append(self.block[self.made - start:self.made - start + take])
            self.made, count = self.made + take, count - take
        return np.concatenate(parts)

    def stream(self, jobs):
        for payload, texts in jobs:
            n = len(texts)
            yield payload, SimpleNamespace(vectors=self._vectors(n), owners=np.arange(n), truncated=0,
                                           spans=np.zeros((n, 2), dtype=np.int64)) if n else None

    def close(self) -> None:
        pass


def entries(count: int):
    from indexer.ingest.readers import Entry

    for first in range(0, count, BLOCK):
        for row in documents(first, min(BLOCK, count - first)):
            yield Entry(key=row["key"], text=row["text"])


def questions_of(real: str) -> np.ndarray:
    return real_vectors()[1] if real == "real" else questions_for()


def build(folder: Path, count: int, index_type: str, real: str = "blobs") -> dict:
    """In this process: the load as build_index runs it, with the synthetic embedder."""
    from indexer.ingest.build import CHUNK
    from indexer.ingest.bulk import CHECKPOINT, ingest, run_marker
    from indexer.store.folder import IndexWriter, now
    from indexer.store.streamed import streams

    embedder = SyntheticEmbedder(questions_of(real), count, real_mix if real == "real" else synthetic)
    stream = streams(index_type, count, DIMENSION)
    marker = {**run_marker("index", Path(__file__), {"count": count}), "started": now()}
    shown, started = [0.0], time.perf_counter()

    def progress(done_: int, total: int) -> None:
        if time.perf_counter() - shown[0] > 60:
            shown[0] = time.perf_counter()
            print(f"  {done_:,} of {total:,} entries, {shown[0] - started:.0f} s, anonymous RSS {rss_kinds()['anon_mb']} MiB",
                  file=sys.stderr, flush=True)

    with largest_rss() as largest, IndexWriter.open(folder, new=manifest_for(index_type), stream=stream) as writer:
        ingest(writer, embedder, entries(count), count, progress=progress, chunk_size=CHUNK,
               checkpoint=CHECKPOINT, marker=marker)
        loaded = time.perf_counter()
        manifest = writer.commit()
    finished = time.perf_counter()
    truth = folder.parent / f"{folder.name}-truth.npy"
    np.save(truth, embedder.best.ids)
    return {"streamed": stream, "load_s": round(loaded - started), "last_commit_s": round(finished - loaded),
            "seconds": round(finished - started), "peak_mb": peak_mb(), "largest_anon_mb": largest["anon_mb"],
            "index_type": manifest.index_type, "index_params": manifest.index_params,
            "segments": len(manifest.segments), "documents": manifest.documents}


def search(folder: Path, real: str = "blobs") -> dict:
    """In a fresh process: the index as a Searcher opens it; recall@10 and p50 against the kept exact answers."""
    from indexer.store import ann
    from indexer.store.ann_compressed import load_flag
    from indexer.store.folder import open_manifest, open_vectors

    manifest = open_manifest(folder)
    vectors = open_vectors(folder, manifest, flags=load_flag(manifest.index_type))
    questions = questions_of(real)
    ann.search(vectors, questions[:5], 10)  # first touches of the mapped pages
    recall, p50, p99 = asked(vectors, questions, np.load(folder.parent / f"{folder.name}-truth.npy"))
    return {"recall_at_10": recall, "search_p50_ms": p50, "search_p99_ms": p99, "searcher_peak_mb": peak_mb()}


def opened_segment(folder: Path):
    import faiss

    from indexer.store.folder import open_manifest

    manifest = open_manifest(folder)
    return manifest, faiss.read_index(str(folder / manifest.segments[0]["file"]), faiss.IO_FLAG_MMAP_IFC)


def asked(index, questions: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """recall@10, p50 and p99 ms of the questions one at a time on one thread."""
    import faiss

    faiss.omp_set_num_threads(1)
    times, hits = [], 0
    for question, right in zip(questions, truth):
        started = time.perf_counter()
        _, ids = index.search(question[None, :], 10)
        times.append(time.perf_counter() - started)
        hits += len(set(ids[0].tolist()) & set(right.tolist()))
    faiss.omp_set_num_threads(os.cpu_count())
    return round(hits / truth.size, 3), round(1000 * float(np.median(times)), 2), round(1000 * float(np.percentile(times, 99)), 2)


def retune(folder: Path, real: str) -> None:
    """The kept index tuned again by the product's tuner, its sample and exact answers made as a streamed
    build makes them (streamed.write_compressed); then the questions at the tuned depth."""
    import math

    from indexer.store import ann, streamed
    from indexer.store import ann_compressed as compressed

    manifest, index = opened_segment(folder)
    started = time.perf_counter()
    sources = streamed.Sources([folder / manifest.segments[0]["file"]], np.zeros(0, np.int64))
    size = min(sources.count, streamed.TRAIN_SAMPLE + compressed.TRAIN_PER_LIST * int(math.sqrt(sources.count)))
    sample_ids, sample = sources.rows(np.sort(np.random.default_rng(0).choice(sources.count, size, replace=False)))
    queries, _ = ann.recall_sample(sample_ids, sample)
    best = streamed.ExactTop(queries, 10)
    for ids, vectors in sources.chunks():
        best.add(vectors, ids)
    truth, kth = best.answers()
    print(f"sample and its exact answers: {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    kept = {name: manifest.index_params[name] for name in ("nlist", "trained_on")}
    params = ann.tune_compressed(index, "ivfpq", kept, queries, truth, kth)
    print(f"tuned in {time.perf_counter() - started:.0f} s: {json.dumps(params)}", flush=True)
    recall, p50, p99 = asked(index, questions_of(real), np.load(folder.parent / f"{folder.name}-truth.npy"))
    print(f"questions at the tuned depth: recall@10 {recall}, p50 {p50} ms, p99 {p99} ms; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)


def sweep(folder: Path, real: str) -> None:
    """recall@10 and p50 of the questions at each k_factor x nprobe of a grid."""
    import faiss

    _, index = opened_segment(folder)
    inner = faiss.downcast_index(index.index)
    base = faiss.downcast_index(inner.base_index)
    questions, truth = questions_of(real), np.load(folder.parent / f"{folder.name}-truth.npy")
    print("| re-scored per result | lists | recall@10 | p50 ms |\n|---|---|---|---|")
    for k_factor in (64, 128, 256):
        for nprobe in sorted({p for p in (128, 256, 512, 1024, 1536) if p < base.nlist} | {base.nlist}):
            inner.k_factor, base.nprobe = float(k_factor), nprobe
            recall, p50, _ = asked(index, questions, truth)
            print(f"| {k_factor} | {nprobe} | {recall} | {p50} |", flush=True)
    print(f"# load {os.getloadavg()[0]:.1f} at the end")


def in_child(what: str, *args) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; import bench.bigbuild as b; "
            f"print(json.dumps(b.{what}(Path(sys.argv[1]), *[int(a) if a.isdigit() else a for a in sys.argv[2:]])))")
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{what} failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000_000)
    parser.add_argument("--type", default="ivfpq", choices=["ivfpq", "sq8", "auto"])
    parser.add_argument("--real", action="store_true", help="vectors mixed from real review vectors, real questions")
    parser.add_argument("--retune", action="store_true", help="tune the kept index again (no build)")
    parser.add_argument("--sweep", action="store_true", help="recall and p50 of the kept index by depth (no build)")
    parser.add_argument("--keep", action="store_true", help="keep the built folder (bench/out/bigbuild/)")
    args = parser.parse_args()
    print(f"$ python bench/bigbuild.py {' '.join(sys.argv[1:])}")
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start", flush=True)
    kind = "real" if args.real else "blobs"
    if args.retune or args.sweep:
        (retune if args.retune else sweep)(OUT / f"{args.type}-{args.count}-{kind}", kind)
        return
    if args.real:
        real_vectors()  # embedded here, once, not inside the timed build
    folder = OUT / f"{args.type}-{args.count}-{kind}"
    shutil.rmtree(folder, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    built = in_child("build", folder, args.count, args.type, kind)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    built["folder_gib"] = round(size / 2**30, 2)
    built["files"] = sorted(p.name for p in folder.iterdir())
    print(json.dumps(built), flush=True)
    searched = in_child("search", folder, kind)
    print(json.dumps(searched), flush=True)
    print(f"{args.count:,} entries, {built['index_type']}: built in {built['seconds']} s (load {built['load_s']} s, "
          f"last commit {built['last_commit_s']} s), peak RSS {built['peak_mb']} MiB, largest anonymous "
          f"{built['largest_anon_mb']} MiB, folder {built['folder_gib']} GiB; recall@10 {searched['recall_at_10']}, "
          f"search p50 {searched['search_p50_ms']} ms; load {os.getloadavg()[0]:.1f} at the end")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

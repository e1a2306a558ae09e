"""Past one machine: embedding rate in-process vs on Ray, and compressed indexes at 10M vectors.

    python bench/scale.py embed --count 20000        # nsmc reviews: in-process (1 and all threads), Ray 1 and 2 workers
    python bench/scale.py vectors --count 10000000 --types ivfpq sq8 --queries 200

embed: the first COUNT reviews of nsmc-raw, embedded by the default recipe in chunks of 2048 (as
`bertdex index` does) on this process's encoder, then on a local Ray with 1 and 2 actors of one
thread each (rate after the actors are up; their start-up is printed apart). Per-worker rates let
N machines x cores be projected. The reviews' vectors are kept (bench/out/scale/real.npy).

vectors: COUNT unit vectors, SYNTHETIC beyond the real ones: each is a mix of two real review vectors
(weights 1 and 0..1) plus Gaussian noise (0.03 a coordinate), normalized. They are written in chunks to a float32 FAISS
flat file (ids 1..COUNT) that is memory-mapped, never held in RAM, as `bertdex index` spools a build's vectors
(indexer.store.streamed.FlatSpool); the compressed index is built from it by the product's builder
(streamed.write_compressed: trained on a sample, coded chunk by chunk, tuned, written as the FAISS file
`bertdex` writes for that type), its peak RSS printed. The search side is the product's: faiss.read_index with
ann_compressed.load_flag (the float32 vectors mapped), ann.search. Questions: 100 bertfaq-covidfaq
user questions and 100 held-out nsmc reviews, embedded for real one at a time, each timed once (a
question's time is its embedding plus its search at each depth: p50/p99). recall@10 against exact
search over all COUNT vectors; the depth (nprobe from 16 up for ivfpq, each with 16 to 128 candidates
re-scored per result while that still adds recall; k_factor for sq8) is the first that reaches 0.98
on these questions, as tuning does on its sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.beir import covid_questions, nsmc_reviews  # noqa: E402
from bench.machine import largest_rss, peak_mb, rss_kinds  # noqa: E402
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out" / "scale"
CHUNK = 2048
BUILD_CHUNK = 250_000
NOISE = 0.03  # per coordinate: |noise| ~0.6 on 384 dimensions


def reviews(data: Path, count: int) -> tuple[list[str], list[str]]:
    texts = nsmc_reviews(data)
    return texts[:count], covid_questions(data)[:100] + texts[-100:]


def embed_bench(args) -> None:
    from indexer.embed.models import default_model
    from indexer.embed.resolve import resolve_recipe
    from indexer.ingest.distributed import RayEmbedder

    texts, questions = reviews(args.data, args.count)
    model = args.model or default_model(texts)  # what `bertdex index` picks for these reviews
    chunks = [texts[i:i + CHUNK] for i in range(0, len(texts), CHUNK)]
    print(f"{len(texts)} nsmc reviews, model {model}, chunks of {CHUNK}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    vectors = None
    for threads in (1, os.cpu_count()):  # named: set_num_threads(1) of the first would stay
        resolved = resolve_recipe(model, threads=threads, precision="fp32")
        recipe = resolved.recipe
        options = {"layer": recipe.layer, "pooling": recipe.pooling, "exclude_special": recipe.exclude_special,
                   "windows": True, "stride": 32, "window_length": 128,
                   "prefix": recipe.passage_prefix}
        started = time.perf_counter()
        parts = [resolved.encoder.embed(chunk, **options).vectors for chunk in chunks]
        seconds = time.perf_counter() - started
        vectors = np.concatenate(parts)
        label = f"in-process, {threads} thread(s)"
        print(f"{label:<28} {len(texts) / seconds:7.1f} texts/s  ({seconds:.1f} s, backend {resolved.encoder.backend})",
              flush=True)
    for workers in args.workers:
        started = time.perf_counter()
        embedder = RayEmbedder(resolved.encoder, recipe, options, address="local", workers=workers)
        try:
            import ray

            ray.get([actor.pid.remote() for actor in embedder.actors])
            up = time.perf_counter() - started
            started = time.perf_counter()
            rows = sum(len(e.vectors) for _, e in embedder.stream(enumerate(chunks)))
            seconds = time.perf_counter() - started
        finally:
            embedder.close()
        rate = len(texts) / seconds
        print(f"{f'Ray, {workers} worker(s)':<28} {rate:7.1f} texts/s  ({seconds:.1f} s; {rate / workers:.1f} per worker; "
              f"start-up {up:.1f} s; {rows} vectors)", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "real.npy", vectors)
    asked = np.concatenate([resolved.encoder.embed([q], **{**options, "prefix": recipe.query_prefix}).vectors
                            for q in questions])
    np.save(OUT / "questions.npy", asked)
    (OUT / "questions.json").write_text(json.dumps(questions, ensure_ascii=False), encoding="utf-8")
    (OUT / "model.txt").write_text(model, encoding="utf-8")


def write_flat(path: Path, count: int, real: np.ndarray, seed: int = 0) -> None:
    """A flat segment file (IDMap2 over IndexFlatIP, ids 1..count) of `count` synthetic unit vectors, written
    a chunk at a time by the product's spool."""
    from indexer.store.streamed import FlatSpool

    rng = np.random.default_rng(seed)
    spool = FlatSpool(path, real.shape[1])
    for start in range(0, count, BUILD_CHUNK):
        n = min(BUILD_CHUNK, count - start)
        if start == 0:
            block = np.concatenate([real, mix(rng, real, n - len(real))])[:n]
        else:
            block = mix(rng, real, n)
        spool.add(block, np.arange(start + 1, start + n + 1, dtype=np.int64))
    spool.close()


def mix(rng, real: np.ndarray, n: int) -> np.ndarray:
    a, b = rng.integers(0, len(real), n), rng.integers(0, len(real), n)
    block = real[a] + rng.uniform(0, 1, (n, 1)).astype(np.float32) * real[b]
    block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(NOISE)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block


def build(args) -> None:
    """In a fresh process: the compressed index from the flat file by the product's streamed builder; prints
    its seconds, peak RSS (VmHWM: mapped file pages included) and the largest anonymous RSS seen (sampled
    every 0.2 s: the process's own memory, what the builder holds)."""
    from indexer.store import streamed

    started = time.perf_counter()
    with largest_rss() as largest:
        sources = streamed.Sources([args.flat], np.zeros(0, np.int64))
        _, params, _ = streamed.write_compressed(args.index, sources, args.type, {"requested": args.type})
    seconds = time.perf_counter() - started
    args.index.with_suffix(".json").write_text(json.dumps(params))
    print(json.dumps({"seconds": round(seconds), "peak_mb": peak_mb(), "largest_anon_mb": largest["anon_mb"],
                      "largest_file_mb": largest["file_mb"], "params": params}), flush=True)


def exact(flat_path: Path, questions: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-10 ids (1-based, as the index's) and scores over the mapped flat file, a chunk at a time."""
    from indexer.store import streamed

    best = streamed.ExactTop(questions, 10)
    for ids, vectors in streamed.Sources([flat_path], np.zeros(0, np.int64)).chunks(BUILD_CHUNK):
        best.add(vectors, ids)
    return best.ids, best.scores


def measure(args) -> None:
    """In a fresh process: load the index as a searcher does, embed + search each question; sweep the depth."""
    import faiss

    from indexer.embed.resolve import resolve_recipe
    from indexer.store import ann, ann_compressed

    index_type = args.type
    index = faiss.read_index(str(args.index), ann_compressed.load_flag(index_type))
    loaded_rss = rss_mb()
    truth = np.load(args.truth)
    kth = np.load(args.truth.with_name(args.truth.stem + "-scores.npy"))[:, -1]
    questions = json.loads((OUT / "questions.json").read_text(encoding="utf-8"))[: args.queries]
    # the encoder as a Searcher makes it (all cores, the measured path); the search itself runs on one thread
    resolved = resolve_recipe((OUT / "model.txt").read_text(encoding="utf-8"))
    recipe = resolved.recipe
    embed = lambda q: resolved.encoder.embed([q], layer=recipe.layer,  # noqa: E731
                                             pooling=recipe.pooling, prefix=recipe.query_prefix).vectors
    inner = faiss.downcast_index(index.index)
    asked, embed_times = [], []
    for question in questions:  # embedded once, each timed; every depth's search time is added to it
        began = time.perf_counter()
        asked.append(embed(question)[0])
        embed_times.append(time.perf_counter() - began)
    embed_times = np.asarray(embed_times)
    if index_type == "sq8":
        ladder = [(None, k) for k in ann_compressed.K_FACTOR_STEPS]
    else:  # each nprobe with more candidates re-scored while that still adds recall
        ladder = [(p, k) for p in ann.NPROBE_STEPS if 16 <= p <= 1024 for k in (16, 32, 64, 128)]
    last, skip = 0.0, None
    for nprobe, k_factor in ladder:
        if nprobe is not None and nprobe == skip:
            continue
        if nprobe is not None:
            ann_compressed.set_depth(inner, index_type, nprobe)
        inner.k_factor = float(k_factor)
        found, times = [], []
        for vector in asked:
            began = time.perf_counter()
            _, ids = ann.search(index, vector[None, :], 10)
            times.append(time.perf_counter() - began)
            found.append(ids[0])
        right = 0
        for i, row in enumerate(found):  # a returned id scoring at least the 10th exact one counts (ties)
            right += sum(1 for x in row.tolist() if x >= 0 and (x in set(truth[i].tolist())
                         or float(index.reconstruct(int(x)) @ asked[i]) >= kth[i] - ann.TIE))
        recall = right / (10 * len(found))
        total = np.sort(embed_times + np.asarray(times))
        print(json.dumps({"type": index_type, "nprobe": nprobe, "k_factor": k_factor, "recall10": round(recall, 4),
                          "p50_ms": round(1000 * total[len(total) // 2], 1),
                          "p99_ms": round(1000 * total[min(len(total) - 1, int(len(total) * 0.99))], 1),
                          "search_p50_ms": round(1000 * float(np.median(times)), 1),
                          "embed_p50_ms": round(1000 * float(np.median(embed_times)), 1),
                          "rss_loaded_mb": loaded_rss, "rss_peak_mb": peak_mb(), **rss_kinds()}), flush=True)
        if recall >= 0.98:
            break
        if nprobe is not None and k_factor > 16 and recall - last < 0.002:
            skip = nprobe  # more candidates no longer help at this depth: more lists
        last = recall


def rss_mb() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20


def vectors_bench(args) -> None:
    import subprocess

    real, questions = np.load(OUT / "real.npy"), np.load(OUT / "questions.npy")[: args.queries]
    for count in args.count:
        flat_path = OUT / f"flat-ids-{count}.faiss"  # with an id map (flat-N.faiss: the bare IndexFlatIP before)
        if not flat_path.exists():
            started = time.perf_counter()
            write_flat(flat_path.with_suffix(".partial"), count, real)
            flat_path.with_suffix(".partial").rename(flat_path)
            print(f"{count:,} synthetic vectors written: {time.perf_counter() - started:.0f} s, "
                  f"{flat_path.stat().st_size / 2**30:.1f} GiB", flush=True)
        truth = OUT / f"truth-{count}.npy"
        if not truth.exists():
            started = time.perf_counter()
            ids, scores = exact(flat_path, questions, count)
            np.save(truth.with_name(truth.stem + "-scores.npy"), scores)
            np.save(truth, ids)
            print(f"exact top-10 of {len(questions)} questions: {time.perf_counter() - started:.0f} s", flush=True)
        for index_type in args.types:
            target = OUT / f"{index_type}-{count}.faiss"
            if not target.exists():
                print(f"{index_type} at {count:,}: building (load {os.getloadavg()[0]:.1f})", flush=True)
                result = subprocess.run([sys.executable, __file__, "build", "--index", str(target), "--type", index_type,
                                         "--flat", str(flat_path)], check=True, capture_output=True, text=True)
                built = json.loads(result.stdout.strip().splitlines()[-1])
                print(f"{index_type} at {count:,}: built in {built['seconds']} s by streamed.write_compressed, peak RSS "
                      f"{built['peak_mb']} MiB (VmHWM), largest anonymous RSS {built['largest_anon_mb']} MiB, "
                      f"file {target.stat().st_size / 2**30:.2f} GiB, load {os.getloadavg()[0]:.1f}; "
                      f"{json.dumps(built['params'])}", flush=True)
            subprocess.run([sys.executable, __file__, "measure", "--index", str(target), "--type", index_type,
                            "--truth", str(truth), "--queries", str(args.queries)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["embed", "vectors", "build", "measure"])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--count", type=int, nargs="+", default=[20_000])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="embed: Ray workers (none: no Ray)")
    parser.add_argument("--model", default=None, help="embed: the model (default: what `bertdex index` picks for the reviews)")
    parser.add_argument("--types", nargs="+", default=["ivfpq", "sq8"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index", type=Path)
    parser.add_argument("--type")
    parser.add_argument("--truth", type=Path)
    parser.add_argument("--flat", type=Path)
    args = parser.parse_args()
    if args.part not in ("measure", "build"):
        print(f"$ python bench/scale.py {' '.join(sys.argv[1:])}", flush=True)
    if args.part == "embed":
        args.count = args.count[0]
        embed_bench(args)
    elif args.part == "vectors":
        vectors_bench(args)
    elif args.part == "build":
        build(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()

"""What a write costs as the archive grows: adding and deleting 100 entries with segments.

    python bench/writes.py                          # flat 10k, 100k, 1M and ivfpq 2M
    python bench/writes.py --sizes 10000 100000 --ivfpq 0

Vectors are precomputed (the model is out of it): SYNTHETIC unit vectors of 384 dimensions around
2,000 centres (each a centre plus Gaussian noise, normalized), entries "entry N about topic T".
Each index is built once and cached in bench/out/writes/, through IndexWriter as `bertdex index`
builds (the ivfpq one streamed: vectors spooled to disk, coded chunk by chunk at the commit, tuned on
its sample). Every measurement runs on a copy of the
cached folder (its segment files hard-linked: they are immutable), in a fresh process, so its peak
RSS (VmHWM) is its own:
    search      the searcher's vector side (open the segments as a Searcher does, compressed types
                mapped) and 100 questions (stored vectors turned to cosine 0.8), top 50 each as a
                Searcher asks at k=10: p50 and peak RSS
    add 100     IndexWriter.open, write 100 new entries with their vectors, commit (a new segment)
    delete 100  delete 100 stored keys, commit (marks only)
    50 adds     50 such adds one after the other (merges as the policy folds them), then search p50
                (wall and the searching thread's CPU time: on a loaded machine the CPU time is the steadier)
    rewrite     (flat) what every write cost before segments: the whole index rewritten (compact)
    parts       (ivfpq) where a question's time goes after the adds: each segment searched alone, and
                the first one as deletions were skipped before (`measure_parts`)
Targets (issue 24): add 100 at 1M within 3x of add 100 at 10k; the writer's peak under 1 GB above the
searcher's; search p50 after 50 adds within 1.2x of before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import peak_mb  # noqa: E402
OUT = ROOT / "bench" / "out" / "writes"
DIMENSION = 384
CENTRES = 2_000
CHUNK = 50_000
QUESTIONS = 100


def synthetic(start: int, count: int) -> np.ndarray:
    """Vectors start..start+count-1, the same ones on every call (seeded per 50k block)."""
    centres = np.random.default_rng(7).standard_normal((CENTRES, DIMENSION)).astype(np.float32)
    blocks = []
    for block in range(start // CHUNK, (start + count - 1) // CHUNK + 1):
        rng = np.random.default_rng(1000 + block)
        points = centres[rng.integers(0, CENTRES, CHUNK)] + 0.8 * rng.standard_normal((CHUNK, DIMENSION)).astype(np.float32)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        blocks.append(points)
    points = np.vstack(blocks)
    offset = start - (start // CHUNK) * CHUNK
    return np.ascontiguousarray(points[offset:offset + count])


def documents(start: int, count: int) -> list[dict]:
    return [{"key": f"e{i}", "text": f"entry {i} about topic {i % 97}", "fields": {}} for i in range(start, start + count)]


def manifest_for(index_type: str):
    from indexer.embed.recipe import Recipe
    from indexer.store.folder import Manifest

    recipe = Recipe(model="synthetic (bench/writes.py)", model_checksum="synthetic", lowercase=False, layer=6,
                    pooling="mean", exclude_special=False, max_length=256, dimension=DIMENSION)
    return Manifest(recipe=recipe, index_type=index_type)


def write_entries(writer, start: int, count: int) -> None:
    for first in range(start, start + count, CHUNK):
        n = min(CHUNK, start + count - first)
        writer.write_documents(documents(first, n), synthetic(first, n), np.arange(n), np.zeros((n, 2), dtype=np.int64))


def build_flat(folder: Path, count: int) -> None:
    from indexer.store.folder import IndexWriter

    with IndexWriter.open(folder, new=manifest_for("flat")) as writer:
        write_entries(writer, 0, count)
        writer.commit()


def build_ivfpq(folder: Path, count: int) -> None:
    """As `bertdex index --index-type ivfpq` builds: the writer spools the vectors to disk and its commit codes
    them chunk by chunk into one ivfpq segment, tuned on its sample (indexer.store.streamed)."""
    from indexer.store.folder import IndexWriter

    with IndexWriter.open(folder, new=manifest_for("ivfpq"), stream=True) as writer:
        write_entries(writer, 0, count)
        writer.commit()


def cached(name: str, count: int, index_type: str) -> Path:
    folder = OUT / name
    if (folder / "ready").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    (build_ivfpq if index_type == "ivfpq" else build_flat)(folder, count)
    (folder / "ready").write_text(str(count))
    print(f"# built {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def linked_copy(folder: Path, target: Path) -> Path:
    """A private copy: the SQLite file copied, the immutable segment files hard-linked."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in folder.iterdir():
        if path.name.startswith(("vectors.", "codes.")):
            os.link(path, target / path.name)
        elif path.name == "bertdex.db":
            shutil.copy2(path, target / path.name)
    return target


# -- measurements, each in its own process -------------------------------------------------------------


def questions_for() -> np.ndarray:
    """Stored vectors turned by a random angle to cosine 0.8 with them (near an entry, not on it)."""
    rng = np.random.default_rng(3)
    base = synthetic(0, 10_000)[rng.choice(10_000, QUESTIONS, replace=False)]
    turn = rng.standard_normal(base.shape).astype(np.float32)
    turn -= np.sum(turn * base, axis=1, keepdims=True) * base
    turn /= np.linalg.norm(turn, axis=1, keepdims=True)
    return (0.8 * base + 0.6 * turn).astype(np.float32)


def opened(folder: Path):
    from indexer.store.ann_compressed import load_flag
    from indexer.store.folder import open_manifest, open_vectors

    manifest = open_manifest(folder)
    return open_vectors(folder, manifest, flags=load_flag(manifest.index_type))


def measure_search(folder: Path) -> dict:
    """The searcher's vector side alone: its peak memory, and p50 of a top-50 per question."""
    from indexer.store import ann

    vectors, questions = opened(folder), questions_for()
    times = []
    for question in questions:
        started = time.perf_counter()
        ann.search(vectors, question[None, :], 50)
        times.append(time.perf_counter() - started)
    return {"p50_ms": round(1000 * float(np.median(times)), 2), "segments": len(vectors.segments), "peak_mb": peak_mb()}


def measure_searches(*folders: Path) -> list[dict]:
    """p50 per folder: every question asked of one folder, then of the next, the order of the folders turned
    each round, so a changing load weighs on all alike and no folder answers a question just asked of
    another (their shared segment files would hold its lists and rows in the caches: the second asked ran
    ~10% faster)."""
    from indexer.store import ann

    indexes, questions = [opened(folder) for folder in folders], questions_for()
    for vectors in indexes:
        ann.search(vectors, questions[:5], 50)  # warm: first touches of mapped pages
    times, cpu = [[] for _ in folders], [[] for _ in folders]
    order = list(range(len(indexes)))
    for round_ in range(6):
        for i in order[round_ % len(order):] + order[:round_ % len(order)]:
            for question in questions:
                started, started_cpu = time.perf_counter(), time.thread_time()
                ann.search(indexes[i], question[None, :], 50)  # one thread for one question: this one
                times[i].append(time.perf_counter() - started)
                cpu[i].append(time.thread_time() - started_cpu)
    return [{"p50_ms": round(1000 * float(np.median(t)), 3), "cpu_p50_ms": round(1000 * float(np.median(c)), 3),
             "segments": len(v.segments)} for t, c, v in zip(times, cpu, indexes)]


def measure_parts(before: Path, after: Path) -> dict:
    """Where a question's time goes after the adds (CPU ms p50, one thread): the index before, the one after,
    and the after index's segments one by one: the first (holding the deleted ids) with FAISS skipping them,
    and as before that skipping was (asking k + 12 and dropping the deleted), then the small flat ones. Each
    case asks all questions in turn, the order of the cases rotated each round (a case that follows
    another asking the same question finds its data in the caches)."""
    import faiss

    from indexer.store import ann, segments

    old, new, questions = opened(before), opened(after), questions_for()
    first, tails = new.segments[0], new.segments[1:]

    def asked_for_more(query):  # the previous way: k + extra candidates, the deleted ones dropped after
        _, ids = first.index.search(query, 50 + min(len(first.deleted), 12))
        return np.isin(ids, first.deleted)

    cases = {"before": lambda q: old.search(q, 50), "after": lambda q: new.search(q, 50),
             "first segment, deleted skipped by FAISS": lambda q: segments._search_one(first, q, 50),
             "first segment, k + 12 asked, deleted dropped": asked_for_more,
             "first segment, no deletions": lambda q: first.index.search(q, 50),
             f"the {len(tails)} later segments ({sum(t.index.ntotal for t in tails)} vectors, "
             f"{'/'.join(ann.kind(t.index) for t in tails)})":
                 lambda q: [segments._search_one(t, q, 50) for t in tails]}
    faiss.omp_set_num_threads(1)
    for case in cases.values():
        case(questions[:5])
    cpu, names = {name: [] for name in cases}, list(cases)
    for round_ in range(6):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            for question in questions:
                started = time.thread_time()
                cases[name](question[None, :])
                cpu[name].append(time.thread_time() - started)
    return {name: round(1000 * float(np.median(times)), 3) for name, times in cpu.items()}


def measure_add(folder: Path, start: int, count: int = 100) -> dict:
    from indexer.store.folder import IndexWriter

    vectors, rows = synthetic(start, count), documents(start, count)
    for row in rows:
        row["text"] += " (added)"
    started = time.perf_counter()
    with IndexWriter.open(folder) as writer:
        writer.write_documents(rows, vectors, np.arange(count), np.zeros((count, 2), dtype=np.int64))
        manifest = writer.commit()
    return {"seconds": round(time.perf_counter() - started, 3), "peak_mb": peak_mb(), "segments": len(manifest.segments)}


def measure_delete(folder: Path, count: int = 100) -> dict:
    from indexer.ingest.build import delete_documents

    started = time.perf_counter()
    removed, _ = delete_documents(folder, [f"e{i}" for i in range(1, 20 * count, 20)][:count])
    return {"seconds": round(time.perf_counter() - started, 3), "peak_mb": peak_mb(), "removed": removed}


def measure_adds(folder: Path, start: int, times: int) -> dict:
    started = time.perf_counter()
    for step in range(times):
        measure_add(folder, start + 100 * step)
    return {"seconds": round(time.perf_counter() - started, 2), "peak_mb": peak_mb()}


def measure_rewrite(folder: Path) -> dict:
    from indexer.store.folder import IndexWriter

    started = time.perf_counter()
    with IndexWriter.open(folder) as writer:
        writer.merge(0)
    return {"seconds": round(time.perf_counter() - started, 2), "peak_mb": peak_mb()}


def in_child(what: str, *args) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; import bench.writes as w; "
            f"args = [int(a) if a.isdigit() else Path(a) for a in sys.argv[1:]]; print(json.dumps(w.{what}(*args)))")
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{what} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(name: str, count: int, index_type: str, rewrite: bool) -> dict:
    folder = cached(name, count, index_type)
    work, compacted = OUT / "work", OUT / "compacted"
    found = {"index": name, "entries": count}
    linked_copy(folder, work)
    found["searcher"] = in_child("measure_search", folder)
    found["add"] = in_child("measure_add", work, count + 10_000_000)
    found["delete"] = in_child("measure_delete", work)
    found["adds50"] = in_child("measure_adds", work, count + 20_000_000, 50)
    compare = [folder, work]
    if rewrite:
        linked_copy(work, compacted)
        found["rewrite"] = in_child("measure_rewrite", compacted)
        compare.append(compacted)
    searches = in_child("measure_searches", *compare)
    found["search"], found["search_after"] = searches[:2]
    if index_type != "flat":
        found["parts"] = in_child("measure_parts", folder, work)
    if rewrite:
        found["search_compacted"] = searches[2]
    shutil.rmtree(work)
    shutil.rmtree(compacted, ignore_errors=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--ivfpq", type=int, default=2_000_000, help="entries of the ivfpq index (0: none)")
    parser.add_argument("--rewrite-max", type=int, default=1_000_000, help="measure the whole rewrite up to this size")
    args = parser.parse_args()
    print(f"# python {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f} at start")
    results = [run(f"flat-{n}", n, "flat", n <= args.rewrite_max) for n in args.sizes]
    if args.ivfpq:
        results.append(run(f"ivfpq-{args.ivfpq}", args.ivfpq, "ivfpq", False))
    print("| index | add 100 (s) | writer peak (MB) | searcher peak (MB) | delete 100 (s) | search p50 (ms; CPU ms) | "
          "after 50 adds (ms; CPU ms; segments) | whole rewrite (s, peak MB) | compacted (ms; CPU ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rewrite = f"{r['rewrite']['seconds']} s, {r['rewrite']['peak_mb']}" if "rewrite" in r else "-"
        print(f"| {r['index']} | {r['add']['seconds']} | {r['add']['peak_mb']} | {r['searcher']['peak_mb']} | "
              f"{r['delete']['seconds']} | {r['search']['p50_ms']}; {r['search']['cpu_p50_ms']} | "
              f"{r['search_after']['p50_ms']}; {r['search_after']['cpu_p50_ms']}; {r['search_after']['segments']} | {rewrite} | "
              f"{r.get('search_compacted', {}).get('p50_ms', '-')}; {r.get('search_compacted', {}).get('cpu_p50_ms', '-')} |")
    small, large = results[0]["add"]["seconds"], [r for r in results if r["entries"] >= 1_000_000]
    for r in large:
        print(f"# add 100 at {r['index']}: {r['add']['seconds'] / small:.1f}x the {results[0]['index']} add (target <= 3x); "
              f"writer peak {r['add']['peak_mb'] - r['searcher']['peak_mb']:+d} MB against the searcher (target < 1024)")
    for r in results:
        same = (f"; {r['search_after']['cpu_p50_ms'] / r['search_compacted']['cpu_p50_ms']:.2f}x the same vectors "
                "compacted into one segment") if "search_compacted" in r else ""
        print(f"# {r['index']}: search CPU p50 after 50 adds {r['search_after']['cpu_p50_ms'] / r['search']['cpu_p50_ms']:.2f}x "
              f"before (target <= 1.2x){same}")
    for r in results:
        if "parts" in r:
            print(f"# {r['index']}, where a question's time goes (CPU ms p50, one thread): " +
                  "; ".join(f"{name} {value}" for name, value in r["parts"].items()))
    print(f"# load {os.getloadavg()[0]:.1f} at the end")
    (OUT / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

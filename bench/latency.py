"""Query latency at 10k, 100k and 1M entries per index type: embedding + FAISS + SQLite text lookup.

    python bench/latency.py                          # builds (once, cached in bench/out/latency), then measures
    python bench/latency.py --sizes 10000 --types flat hnsw --queries 100
    python bench/latency.py --data /elsewhere/shared/data --threads 1

Entries: the 69,241 distinct English Tatoeba sentences, then nsmc-raw reviews, 100,000 in all, embedded
for real once by `build_index`. The 10k index holds the first 10,000 of them (their real vectors and texts).
The 1M index is SYNTHETIC beyond the first 100k: each real entry gets 9 copies whose vectors are the real
vector plus Gaussian noise (cosine ~0.9 to it), with the real text; the query path is the real one.
Other types are converted from the flat index of the same size by a commit (what `auto` does).

Questions: 100 English user questions of bertfaq-covidfaq (short, FAQ-like) and 100 held-out nsmc
reviews (Korean, ~3x more tokens); p50 is also printed for each half, since embedding time follows length. Each (size, type) is measured in its own process, so peak RSS is that process's:
a loaded and warmed Searcher (Searcher.warm_up, as `serve` starts), one question at a time (p50/p99 of Searcher.search, k=10, dense) with the time split
into embedding / FAISS / the rest, then batches of 32 (Searcher.search_many), and recall@10 of the
ANN types against the flat index of the same size on these questions (a returned entry whose
score ties the 10th exact one counts: nsmc holds duplicate reviews, whose vectors are equal).
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.beir import covid_questions, nsmc_reviews  # noqa: E402
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out" / "latency"
BASE = 100_000
COPIES = 9
NOISE = 0.024  # per coordinate: |noise| ~ 0.47 on 384 dimensions, cosine to the real vector ~0.9


def source_entries(data: Path) -> tuple[list[str], list[str]]:
    """100k index texts (tatoeba, then nsmc) and 200 questions not among them."""
    folder = data / "tatoeba-laser" / "data" / "tatoeba" / "v1"
    tatoeba = sorted({line.strip() for path in sorted(folder.glob("*.eng"))
                      for line in path.read_text(encoding="utf-8").splitlines() if line.strip()})
    reviews = nsmc_reviews(data)
    texts = (tatoeba + reviews)[:BASE]
    faq = covid_questions(data)
    questions = faq[:100] + reviews[-100:]  # short English FAQ questions, then longer Korean reviews
    return texts, questions


def build_all(data: Path, sizes: list[int], types: list[str], out: Path, threads: int | None = None,
              vectors: Path | None = None) -> None:
    """Build what is not cached yet: the real 100k index, then derived sizes and converted types."""
    from indexer import build_index
    from indexer.embed.resolve import resolve_recipe

    texts, questions = source_entries(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "questions.json").write_text(json.dumps(questions, ensure_ascii=False), encoding="utf-8")
    real = out / (f"{BASE}-flat" if vectors is None else "cached-vectors-flat")
    if not ready(real) and vectors is not None:
        from_vectors(real, texts, np.load(vectors))
    if not ready(real):
        source = out / "entries.jsonl"
        source.write_text("".join(json.dumps({"id": f"e{i}", "text": t}, ensure_ascii=False) + "\n"
                                  for i, t in enumerate(texts)), encoding="utf-8")
        shutil.rmtree(real, ignore_errors=True)  # an interrupted build leaves a folder without a manifest
        started = time.perf_counter()
        report = build_index(source, real, resolved=resolve_recipe(threads=threads), index_type="flat", replace=True,
                             progress=lambda done, total: print(f"  embedding {done}/{total} "
                                                                f"({done / (time.perf_counter() - started):.0f}/s)", flush=True))
        print(f"built {real.name}: {report.documents} entries in {report.seconds:.0f} s ({report.rate:.0f}/s)", flush=True)
    for size in sizes:
        flat = out / f"{size}-flat"
        if not ready(flat):
            derive(real, flat, size)
        for index_type in types:
            folder = out / f"{size}-{index_type}"
            if index_type != "flat" and not ready(folder):
                convert(flat, folder, index_type)


def from_vectors(target: Path, texts: list[str], vectors: np.ndarray) -> None:
    """The "real" index from vectors embedded before (--vectors: the first len(vectors) texts' vectors, in order,
    by the default recipe), without embedding again; sizes beyond it are derived as usual (synthetic copies)."""
    from indexer.embed.resolve import resolve_recipe
    from indexer.store.folder import IndexWriter, Manifest

    recipe = resolve_recipe().recipe
    shutil.rmtree(target, ignore_errors=True)
    with IndexWriter.open(target, new=Manifest(recipe=recipe, index_type="flat")) as writer:
        count = len(vectors)
        documents = [{"key": f"e{i}", "text": text, "fields": {}} for i, text in enumerate(texts[:count])]
        writer.write_documents(documents, vectors.astype(np.float32), np.arange(count), np.zeros((count, 2), dtype=np.int64))
        writer.commit()
    print(f"built {target.name} from {count} cached vectors", flush=True)


def ready(folder: Path) -> bool:
    """A finished index (an interrupted build leaves a folder without a manifest)."""
    try:
        _generation(folder)
        return True
    except Exception:
        return False


def derive(real: Path, target: Path, size: int) -> None:
    """An index of `size` entries from the real one: its first entries, then noisy copies (synthetic)."""
    from indexer.store import ann
    from indexer.store.folder import IndexWriter, connect, load_vectors, read_manifest

    started = time.perf_counter()
    db = connect(real, readonly=True)
    manifest = read_manifest(db, real)
    ids, vectors = ann.stored(load_vectors(real, manifest.generation, manifest.recipe.dimension))
    order = np.argsort(ids)
    ids, vectors = ids[order], vectors[order]
    rows = db.execute("SELECT p.id, d.key, d.text FROM passages p JOIN documents d ON d.id = p.document_id ORDER BY p.id").fetchall()
    db.close()
    assert [r[0] for r in rows] == ids.tolist()
    first = np.asarray([i == 0 or rows[i][1] != rows[i - 1][1] for i in range(len(rows))])  # one window per entry
    rows, vectors = [r for r, keep in zip(rows, first) if keep], vectors[first]
    rng = np.random.default_rng(0)
    shutil.rmtree(target, ignore_errors=True)
    fresh = type(manifest)(recipe=manifest.recipe, settings=manifest.settings, index_type="flat")
    with IndexWriter.open(target, new=fresh) as writer:
        for copy in range(0, size // len(rows) + 1):
            count = min(len(rows), size - copy * len(rows))
            if count <= 0:
                break
            part = vectors[:count]
            if copy:
                part = part + NOISE * rng.standard_normal(part.shape).astype(np.float32)
                part /= np.linalg.norm(part, axis=1, keepdims=True)
            for start in range(0, count, 50_000):
                end = min(start + 50_000, count)
                documents = [{"key": f"{key}" if not copy else f"{key}~{copy}", "text": text, "fields": {}}
                             for _, key, text in rows[start:end]]
                writer.write_documents(documents, part[start:end], np.arange(end - start), np.zeros((end - start, 2), dtype=np.int64))
        writer.commit()
    print(f"derived {target.name} ({'synthetic beyond ' + str(len(rows)) if size > len(rows) else 'real vectors'}) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)


def convert(flat: Path, target: Path, index_type: str) -> None:
    """Copy the flat index and commit it as `index_type` (built from the stored vectors, search depth tuned)."""
    from indexer.store.folder import IndexWriter, Manifest

    started = time.perf_counter()
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(flat, target, ignore=shutil.ignore_patterns("write.lock"))
    with IndexWriter.open(target) as writer:
        writer.set_manifest(Manifest(**{**writer.manifest.__dict__, "index_type": index_type, "index_params": {}}))
        writer.merge(0)  # the whole index rebuilt as its (new) type, as `bertdex compact` does: a plain commit
        final = writer.commit()  # of no new vectors would write nothing (segments)
    print(f"converted {target.name} in {time.perf_counter() - started:.0f} s: {final.index_params}", flush=True)


def retune(folder: Path) -> None:
    from indexer.store.folder import IndexWriter

    started = time.perf_counter()
    with IndexWriter.open(folder) as writer:
        writer.merge(0)
        final = writer.commit()
    print(f"retuned {folder.name} in {time.perf_counter() - started:.0f} s: {final.index_params}", flush=True)


def measure(folder: Path, questions: list[str], exact: Path | None) -> dict:
    """In this process: load a Searcher, time single and batched questions (ms)."""
    from indexer.store import ann
    from search import Searcher

    started = time.perf_counter()
    searcher = Searcher(folder)
    load_seconds = time.perf_counter() - started
    searcher.warm_up()  # what `serve` does before it says it is ready (on OpenVINO: question widths to 128 tokens)
    searcher.warm_up_long()  # and on a thread once ready (to 256): a server up for a second or so
    for question in questions[:10]:
        searcher.search(question, k=10, mode="dense")
    total, embed, dense = [], [], []
    for question in questions:
        t0 = time.perf_counter()
        searcher.search(question, k=10, mode="dense")
        t1 = time.perf_counter()
        vector = searcher.embed([question])
        t2 = time.perf_counter()
        ann.search(searcher.vectors, vector, 50)  # what Searcher asks FAISS for at k=10
        t3 = time.perf_counter()
        total.append(t1 - t0), embed.append(t2 - t1), dense.append(t3 - t2)
    batches = []
    for start in range(0, len(questions) - 31, 32):
        t0 = time.perf_counter()
        searcher.search_many(questions[start : start + 32], k=10, mode="dense")
        batches.append(time.perf_counter() - t0)
    result = {
        "entries": searcher.manifest.documents, "index_type": searcher.manifest.index_type,
        "params": {k: v for k, v in searcher.manifest.index_params.items() if k != "requested"},
        "load_s": load_seconds,
        "p50": 1e3 * np.percentile(total, 50), "p99": 1e3 * np.percentile(total, 99),
        "embed_p50": 1e3 * np.percentile(embed, 50), "faiss_p50": 1e3 * np.percentile(dense, 50),
        "p50_first_half": 1e3 * np.percentile(total[: len(total) // 2], 50),
        "p50_second_half": 1e3 * np.percentile(total[len(total) // 2 :], 50),
        # the tail of each half: the halves differ in length (10 against ~60 tokens), so the p99 of the mix is
        # the longest Korean reviews', while a half's p99 against its p50 is the tail of like questions
        "p99_first_half": 1e3 * np.percentile(total[: len(total) // 2], 99),
        "p99_second_half": 1e3 * np.percentile(total[len(total) // 2 :], 99),
        "embed_p99": 1e3 * np.percentile(embed, 99), "faiss_p99": 1e3 * np.percentile(dense, 99),
        "batch32_p50": 1e3 * np.percentile(batches, 50) if batches else None,
    }
    if exact is not None:
        from indexer.store.folder import load_vectors

        vectors = searcher.embed(questions)
        manifest = searcher.manifest
        ids, stored = ann.stored(load_vectors(exact, _generation(exact), manifest.recipe.dimension))
        truth, kth = ann.exact_neighbours(stored, vectors, ids, 10)
        result["recall10"] = ann.recall_at(searcher.vectors, vectors, truth, 10, kth=kth)  # ties count
    return result


def _generation(folder: Path) -> int:
    from indexer.store.folder import connect, read_manifest

    db = connect(folder, readonly=True)
    try:
        return read_manifest(db, folder).generation
    finally:
        db.close()


def run_worker(folder: Path, exact: Path | None, threads: int | None, out: Path) -> tuple[dict, float]:
    command = [sys.executable, __file__, "--worker", str(folder), "--out", str(out)]
    if exact is not None:
        command += ["--exact", str(exact)]
    if threads:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if status != 0:
        raise SystemExit(f"worker for {folder} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=OUT, help="where built indexes are cached")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--types", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--vectors", type=Path, help="a .npy of the entries' vectors embedded before (the first "
                        "N texts, default recipe): the real index is made from them instead of embedding")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (building and measuring)")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--retune", action="store_true", help="re-commit the cached ANN indexes, so the current "
                        "code tunes their search depth (no rebuild)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--exact", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        questions = json.loads((args.out / "questions.json").read_text(encoding="utf-8"))
        result = measure(args.worker, questions[: args.queries], args.exact)
        (args.out / f"{args.worker.name}.result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return
    print(f"# python bench/latency.py {' '.join(sys.argv[1:])}")
    print(f"# {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    build_all(args.data, args.sizes, args.types, args.out, args.threads, args.vectors)
    if args.retune:
        for size in args.sizes:
            for index_type in args.types:
                if index_type != "flat":
                    retune(args.out / f"{size}-{index_type}")
    if args.build_only:
        return
    questions = json.loads((args.out / "questions.json").read_text(encoding="utf-8"))[: args.queries]
    from indexer.embed.resolve import resolve_recipe

    tokens = [len(x) for x in resolve_recipe().encoder.tokenize(questions)[0]]
    half = len(tokens) // 2
    print(f"# questions: {np.mean(tokens[:half]):.0f} tokens on average (English FAQ), {np.mean(tokens[half:]):.0f} (Korean reviews)")
    print(f"\n{'entries':>9} {'type':5} {'p50 ms':>7} {'p99 ms':>7} {'p99/p50':>7} {'EN p50':>6} {'EN p99':>6} {'KO p50':>6} {'KO p99':>6} "
          f"{'embed':>6} {'faiss':>6} {'faiss p99':>9} {'batch32 ms':>10} {'per q':>6} {'recall@10':>9} {'RSS MiB':>8} {'load s':>6}  params")
    for size in args.sizes:
        for index_type in args.types:
            folder = args.out / f"{size}-{index_type}"
            exact = args.out / f"{size}-flat" if index_type != "flat" else None
            result, rss = run_worker(folder, exact, args.threads, args.out)
            recall = f"{result['recall10']:.3f}" if "recall10" in result else "exact"
            batch = result["batch32_p50"]
            print(f"{result['entries']:9d} {index_type:5} {result['p50']:7.2f} {result['p99']:7.2f} "
                  f"{result['p99'] / result['p50']:6.2f}x "
                  f"{result['p50_first_half']:6.2f} {result['p99_first_half']:6.2f} {result['p50_second_half']:6.2f} "
                  f"{result['p99_second_half']:6.2f} {result['embed_p50']:6.2f} {result['faiss_p50']:6.2f} "
                  f"{result['faiss_p99']:9.2f} {batch:10.1f} {batch / 32:6.2f} "
                  f"{recall:>9} {rss:8.0f} {result['load_s']:6.1f}  {result['params']}", flush=True)
    print(f"\n# load average {os.getloadavg()[0]:.1f} at the end; entries beyond 100,000 are synthetic (see --help)")


if __name__ == "__main__":
    main()

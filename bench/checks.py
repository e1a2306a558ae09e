"""What the searcher's trust checks cost (search/checks.py, indexer/store/verify.py), on synthetic unit vectors.

    python bench/checks.py                       # 10k, 40k and 200k vectors of 384 dimensions
    python bench/checks.py --sizes 10000 --k 10

For each size: a flat IndexIDMap2 of random unit vectors (and its FAISS file and a SQLite passages
table, as a real index has), then
  answer   one question's exact search (k x 4 candidates, as the searcher's pool) and, apart, check_results on them
  reading  faiss.read_index of the file (what opening costs anyway)
  opening  check_opened: the id map against SQLite, 64 sampled norms, the checksum when the file is <= 64 MiB
  verify   the vector checks of `bertdex verify` (every norm, 50 vectors found by themselves; no model)
Prints the median of --rounds runs, the CPU, and the load average beside each figure.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.store import ann, integrity, segments  # noqa: E402
from indexer.store.verify import _vector_problems  # noqa: E402
from search.checks import check_opened, check_results  # noqa: E402
from bench.machine import cpu_name  # noqa: E402


def median_ms(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(size: int, k: int, rounds: int, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((size, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, size + 1, dtype=np.int64)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(384))
    index.add_with_ids(vectors, ids)
    path = folder / f"vectors.{size}.faiss"
    faiss.write_index(index, str(path))
    record = {"file": path.name, **integrity.faiss_record(path, index.ntotal), "kind": "flat", "first_id": 1, "last_id": size}
    manifest = SimpleNamespace(segments=(record,), deleted=(), generation=1)  # what check_opened reads of one
    opened = segments.SegmentSet([segments.Segment(path.name, index, np.zeros(0, np.int64), record["blake2b"], 1, size)], 384)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE passages (id INTEGER PRIMARY KEY, document_id INTEGER)")
    db.executemany("INSERT INTO passages VALUES (?, ?)", ((int(i), int(i)) for i in ids))
    question = vectors[:1] * 0.8 + rng.standard_normal((1, 384)).astype(np.float32) * 0.03
    question /= np.linalg.norm(question)
    scores, found = ann.search(index, question, 4 * k)
    return {
        "size": size, "file MiB": path.stat().st_size / 2**20,
        "search ms": median_ms(lambda: ann.search(index, question, 4 * k), rounds),
        "answer checks ms": median_ms(lambda: check_results(index, scores, found, folder), rounds),
        "read ms": median_ms(lambda: faiss.read_index(str(path)), 3),
        "opening checks ms": median_ms(lambda: check_opened(opened, db, folder, manifest), max(3, rounds // 10)),
        "verify vectors ms": median_ms(lambda: _vector_problems(_Keys(), opened.segments[0], path.name), 3),
    }


class _Keys:
    """The one query _vector_problems makes for a problem's key (none on clean vectors)."""

    def execute(self, *args):
        raise AssertionError("clean vectors need no key")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,40000,200000")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=50)
    options = parser.parse_args()
    print(f"$ python bench/checks.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f} at the start")
    print("| vectors | FAISS file (MiB) | exact search, k x 4 (ms) | answer checks (ms) | reading the file (ms) "
          "| opening checks (ms) | verify's vector checks (ms) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for size in (int(s) for s in options.sizes.split(",")):
            row = measure(size, options.k, options.rounds, Path(folder))
            print(f"| {row['size']:,} | {row['file MiB']:.1f} | {row['search ms']:.2f} | {row['answer checks ms']:.3f} "
                  f"| {row['read ms']:.1f} | {row['opening checks ms']:.1f} | {row['verify vectors ms']:.0f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

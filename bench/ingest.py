"""Streaming ingestion at scale: index prefixes of the 712k nsmc reviews, print entries/s and peak RSS.

    python bench/ingest.py                      # prefixes 5k, 20k, 50k
    python bench/ingest.py --sizes 712383       # the whole collection (about an hour here)

Each size runs `bertdex index` in its own process (os.wait4 gives that process's peak RSS), so the
figures are what a user sees. Peak RSS minus the vectors' own bytes should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "nsmc-raw" / "nsmc_raw_reviews.tsv.gz"


def write_prefix(source: Path, size: int, target: Path) -> Path:
    if target.exists():
        return target
    with gzip.open(source, "rt", encoding="utf-8") as rows, open(target, "w", encoding="utf-8") as out:
        for line in itertools.islice(rows, size + 1):  # + the header
            out.write(line)
    return target


def run_index(data: Path, folder: Path, threads: int | None) -> tuple[float, float, str]:
    command = [sys.executable, str(ROOT / "cli.py"), "index", str(folder), str(data), "--replace",
               "--text-field", "review", "--id-field", "review_id", "--on-error", "skip", "--quiet", "--json"]
    if threads:
        command += ["--threads", str(threads)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read(), process.stderr.read()
    if status != 0:
        raise SystemExit(f"bertdex index failed:\n{err}")
    return seconds, usage.ru_maxrss / 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ingest")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import json

    print(f"# {' '.join(sys.argv)}  ({os.cpu_count()} cores)")
    print(f"{'entries':>8} {'seconds':>8} {'entries/s':>10} {'peak RSS MiB':>13} {'vectors MiB':>12} {'RSS - vectors':>14}")
    for size in args.sizes:
        data = write_prefix(args.data, size, args.out / f"nsmc-{size}.tsv")
        seconds, rss, out = run_index(data, args.out / f"index-{size}", args.threads)
        report = json.loads(out)
        vectors_mib = report["vectors"] * 384 * 4 / 2**20
        print(f"{report['documents']:>8} {seconds:>8.1f} {report['documents'] / seconds:>10.0f} {rss:>13.0f} "
              f"{vectors_mib:>12.1f} {rss - vectors_mib:>14.0f}", flush=True)


if __name__ == "__main__":
    main()

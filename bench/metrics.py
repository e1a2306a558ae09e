"""What /metrics costs the service: one request's bookkeeping (Metrics.observe) and one scrape
(Metrics.exposition), beside one question's search in the same run, on the example FAQ.

    python bench/metrics.py            # prints the figures, the command, the CPU and the load
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def per_call(function, repeat: int) -> float:
    """Median seconds of one call over 5 rounds of `repeat` calls."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            function()
        rounds.append((time.perf_counter() - started) / repeat)
    return statistics.median(rounds)


def main() -> None:
    from indexer import build_index
    from search import Searcher
    from search.server.metrics import Metrics

    folder = Path(tempfile.mkdtemp(prefix="bertdex-metrics-")) / "faq"
    build_index(ROOT / "examples" / "faq_en.csv", folder, text_fields=["question"], group_field="group",
                model="all-MiniLM-L6-v2")
    metrics = Metrics(folder)
    searcher = Searcher(folder)
    searcher.search("warm up")
    observe = per_call(lambda: metrics.observe("POST", "/search", 200, 0.012), 20_000)
    metrics.questions([True, False])
    scrape = per_call(metrics.exposition, 200)
    question = per_call(lambda: searcher.search("I forgot my password", k=5), 50)
    print(f"command: python bench/metrics.py; CPU: {cpu()}; load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"one request's metrics (observe): {observe * 1e6:.1f} us")
    print(f"one scrape of /metrics (exposition, reads the manifest and the folder): {scrape * 1e3:.2f} ms")
    print(f"one question (Searcher.search, k=5, dense): {question * 1e3:.1f} ms")
    print(f"metrics per request / question: {observe / question:.2%}")


if __name__ == "__main__":
    main()

"""What a pair of models costs: indexing speed and one-question latency, all-MiniLM-L6-v2 alone against
MiniLM + multilingual-e5-small (`bertdex index --companion`), on the same entries and questions.

    python bench/pair.py [--data ../shared/data] [--entries 2000] [--questions 200] [--share 0.7] [--spinning]

Entries: the first --entries texts of banking77 (short customer messages; never its label); questions:
the bertfaq-covidfaq user questions. Each index is built by `build_index` on the default paths this
machine measured (`bertdex doctor`; a first build exports and measures); the rate is beyond a 10-entry
build's time (the model loads), which is printed apart; a loaded Searcher
then answers the questions one at a time (dense, k=10) after serve's warm-up and 10 warm-up questions:
p50 / p99 in ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.beir import covid_questions  # noqa: E402

SMALL = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--share", type=float, default=0.7)
    parser.add_argument("--spinning", action="store_true",
                        help="also answer with ONNX Runtime's threads the other way: sleeping for one model, spinning for a pair")
    args = parser.parse_args()
    from indexer.embed.onnx_model import OnnxModel, spinning
    from indexer import build_index
    from indexer.embed.models import E5
    from search.searcher import Searcher

    work = Path(tempfile.mkdtemp(prefix="bertdex-pair-"))
    data = work / "entries.jsonl"
    with data.open("w", encoding="utf-8") as out, (args.data / "banking77" / "beir" / "corpus.jsonl").open(encoding="utf-8") as source:
        for _, line in zip(range(args.entries), source):
            record = json.loads(line)
            out.write(json.dumps({"id": record["_id"], "text": record["text"]}) + "\n")
    small = work / "small.jsonl"
    small.write_text("".join(data.read_text(encoding="utf-8").splitlines(keepends=True)[:SMALL]), encoding="utf-8")
    questions = covid_questions(args.data)[: args.questions + 10]
    print(f"command: python {shlex.join(sys.argv)}  ({platform.processor() or 'cpu'}, {args.entries} entries, "
          f"{len(questions) - 10} questions)")
    print(f"| index | indexing (entries/s, beyond the first {SMALL}) | a {SMALL}-entry index, whole (s: model load) | question p50 (ms) | p99 (ms) |")
    print("|---|---|---|---|---|")
    for label, options in (("all-MiniLM-L6-v2", {}), (f"+ {args.share} x {E5}", {"companion": E5, "companion_share": args.share})):
        folder = work / label.replace(" ", "_")
        build_index(small, work / "warm", model="all-MiniLM-L6-v2", replace=True, **options)  # exports, measures
        started = time.perf_counter()
        build_index(small, work / "small", model="all-MiniLM-L6-v2", replace=True, **options)
        fixed = time.perf_counter() - started
        started = time.perf_counter()
        report = build_index(data, folder, model="all-MiniLM-L6-v2", **options)
        per_second = (report.documents - SMALL) / (time.perf_counter() - started - fixed)
        p50, p99 = question_times(Searcher(folder), questions)
        print(f"| {label} | {per_second:.0f} | {fixed:.1f} | {p50:.1f} | {p99:.1f} |", flush=True)
        if args.spinning:  # the other way round: a single model's sessions sleeping, a pair's spinning
            with spinning(not options):
                searcher = Searcher(folder)
            if options:
                for encoder in (searcher.encoder.own, searcher.encoder.companion):
                    session = getattr(encoder.runner, "session", None)
                    if session is not None:
                        encoder.runner.session = OnnxModel(session.path, session.threads, spinning=True)
            p50, p99 = question_times(searcher, questions)
            print(f"| {label}, threads {'spinning' if options else 'sleeping'} between runs | | | {p50:.1f} | {p99:.1f} |",
                  flush=True)


def question_times(searcher, questions: list[str]) -> tuple[float, float]:
    """p50 and p99 ms of one question at a time (dense, k=10), after the warm-up `serve` does (Searcher.warm_up
    and warm_up_long) and 10 warm-up questions; closes the searcher."""
    searcher.warm_up()
    searcher.warm_up_long()
    times = []
    for i, question in enumerate(questions):
        began = time.perf_counter()
        searcher.search(question, k=10, mode="dense")
        if i >= 10:
            times.append((time.perf_counter() - began) * 1000)
    searcher.close()
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


if __name__ == "__main__":
    main()

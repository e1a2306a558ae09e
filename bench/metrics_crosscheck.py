"""Our metrics against ir-measures (trec_eval's definitions, through pytrec_eval) on real runs: each small
retrieval set of ../shared/data is indexed, its BEIR queries run through the real Searcher in each mode,
and every query's metrics compared with ir-measures' on the same ranked keys.

    python bench/metrics_crosscheck.py [--data ../shared/data] [--sets bertfaq-covidfaq,deepset-covid-qsim]

Prints, per set and mode, the mean of each metric (ours / theirs) and the largest per-query difference.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = {"bertfaq-covidfaq": ["title", "text"], "deepset-covid-qsim": ["text"]}
MODES = ("dense", "keyword", "hybrid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding the data sets (default: ../shared/data from the repository)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    args = parser.parse_args()

    from indexer import build_index
    from indexer.embed.resolve import resolve_recipe
    from search import Searcher
    from search.quality.evaluate import evaluate, load_qrels, load_queries

    resolved = resolve_recipe()
    print(f"{'set':20} {'mode':8} {'metric':10} {'ours':>8} {'theirs':>8} {'max |diff|':>11}")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bertdex-crosscheck-") as work:
        for name in args.sets.split(","):
            beir = args.data / name / "beir"
            folder = Path(work) / name
            build_index(beir / "corpus.jsonl", folder, text_fields=SETS[name], id_field="_id", resolved=resolved)
            searcher = Searcher(folder, encoder=resolved.encoder)
            queries, qrels = load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels.tsv")
            for mode in MODES:
                result = evaluate(searcher, queries, qrels, mode=mode)
                worst = max(worst, compare(name, mode, result, qrels))
    print(f"\nlargest per-query difference over every set, mode and metric: {worst:.2e}")
    print(f"command: python {shlex.join(sys.argv)}")


def compare(name: str, mode: str, result, qrels) -> float:
    import ir_measures
    from ir_measures import RR, R, Success, nDCG

    theirs = {"mrr@10": RR @ 10, "ndcg@10": nDCG @ 10, "recall@1": R @ 1, "recall@5": R @ 5,
              "recall@10": R @ 10, "hit@1": Success @ 1}
    names = {measure: metric for metric, measure in theirs.items()}
    rankings = {r.query_id: list(r.ranked) for r in result.per_query}
    run = {qid: {key: float(len(ranked) - i) for i, key in enumerate(ranked)} for qid, ranked in rankings.items()}
    judged = {qid: {key: int(grade) for key, grade in qrels[qid].items()} for qid in rankings}
    found: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(list(theirs.values()), judged, run):
        found.setdefault(metric.query_id, {})[names[metric.measure]] = metric.value
    worst = 0.0
    for metric in theirs:
        differences = [abs(r.metrics[metric] - found[r.query_id][metric]) for r in result.per_query]
        mean_theirs = sum(found[r.query_id][metric] for r in result.per_query) / len(result.per_query)
        print(f"{name:20} {mode:8} {metric:10} {result.metrics[metric]:8.4f} {mean_theirs:8.4f} {max(differences):11.2e}")
        worst = max(worst, max(differences))
    return worst


if __name__ == "__main__":
    main()

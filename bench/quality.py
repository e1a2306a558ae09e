"""Answer quality on every retrieval set of ../shared/data: dense, keyword, hybrid and tuned, in one table.

    python bench/quality.py [--data ../shared/data] [--sets banking77,...] [--work DIR]

Each set's corpus is indexed with the default recipe (bundled all-MiniLM-L6-v2): bertfaq-covidfaq
embeds title + text, banking77 embeds text only (its title is the intent label: kept as a stored field,
never embedded), the others text. Then its BEIR queries are run in each mode through the real
Searcher. "tuned" is `bertdex tune` with the set's labelled queries, then measured the same way;
"2-fold" is the tuner's honest estimate (choose on half the queries, measure on the other half);
"tuned, no labels" tunes from the collection's own structure where it has one (banking77: entries
sharing an intent label). Figures are MRR@10 unless named.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = {  # name -> (fields to embed, group field for tuning without labels)
    "bertfaq-covidfaq": (["title", "text"], None),
    "deepset-covid-qsim": (["text"], None),
    "banking77": (["text"], "title"),
    "ko-question-pair": (["text"], None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding the data sets (default: ../shared/data from the repository)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    parser.add_argument("--work", type=Path, default=None, help="folder for the indexes (default: a temporary one)")
    parser.add_argument("--no-unlabelled", action="store_true", help="skip tuning without labels")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per set")
    args = parser.parse_args()

    from indexer.embed.encoder import Encoder
    from indexer.embed.models import DEFAULT_MODEL, resolve_model_folder

    encoder = Encoder(resolve_model_folder(DEFAULT_MODEL), keep_layers=None)
    work = args.work or Path(tempfile.mkdtemp(prefix="bertdex-quality-"))
    rows = []
    for name in args.sets.split(","):
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}: choose from {', '.join(SETS)}")
        rows.append(measure(name, args.data / name / "beir", work / name, encoder, not args.no_unlabelled))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(table(rows))


def measure(name: str, beir: Path, folder: Path, encoder, unlabelled: bool) -> dict:
    from indexer import build_index
    from search.quality.evaluate import evaluate, load_qrels, load_queries
    from indexer.ingest.reembed import store_search_settings
    from search.searcher import Searcher
    from search.quality.tune import tune_index

    text_fields, group_field = SETS[name]
    started = time.perf_counter()
    queries, qrels = load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels.tsv")
    corpus = folder.parent / f"{name}.corpus.jsonl"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with corpus.open("w", encoding="utf-8") as handle:
        for line in (beir / "corpus.jsonl").open(encoding="utf-8"):
            record = json.loads(line)
            handle.write(json.dumps({"id": record["_id"], "title": record.get("title", ""), "text": record["text"]},
                                    ensure_ascii=False) + "\n")
    build_index(corpus, folder, text_fields=text_fields, id_field="id", replace=folder.exists())
    row = {"set": name, "documents": sum(1 for _ in corpus.open()), "queries": 0}

    def run(label, mode=None, weight=None):
        searcher = Searcher(folder, encoder=encoder)
        try:
            result = evaluate(searcher, queries, qrels, mode=mode, weight=weight)
        finally:
            searcher.close()
        row["queries"] = result.queries
        row[label] = result.metrics
        print(f"{name:20s} {label:18s} MRR@10 {result.metrics['mrr@10']:.3f}  nDCG@10 {result.metrics['ndcg@10']:.3f}  "
              f"hit@1 {result.metrics['hit@1']:.3f}", file=sys.stderr, flush=True)

    run("dense", "dense")
    run("keyword", "keyword")
    run("hybrid score 0.5", "hybrid", 0.5)
    store_search_settings(folder, {"mode": "hybrid", "weight": 0.5, "fusion": "rank"})
    run("hybrid rank 0.5", "hybrid", 0.5)
    store_search_settings(folder, {})
    report = tune_index(folder, queries=queries, qrels=qrels, encoder=encoder)
    row["tuned_choice"] = report.best.candidate.label()
    row["tuned_heldout"] = report.heldout_mrr
    row["tune_seconds"] = report.seconds
    run("tuned")
    if unlabelled and group_field:
        store_search_settings(folder, {})
        blind = tune_index(folder, group_field=group_field, encoder=encoder, store=True)
        row["blind_choice"] = blind.best.candidate.label()
        run("tuned, no labels")
    row["seconds"] = time.perf_counter() - started
    return row


def table(rows: list[dict]) -> str:
    head = ["set", "docs", "queries", "dense", "keyword", "hybrid score 0.5", "hybrid rank 0.5", "tuned",
            "tuned 2-fold", "tuned, no labels", "tuned choice", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        def mrr(label):
            return f"{row[label]['mrr@10']:.3f}" if label in row else "-"

        best_single = max(row[label]["mrr@10"] for label in ("dense", "keyword", "hybrid score 0.5", "hybrid rank 0.5"))
        tuned = mrr("tuned") + (" (>= best)" if row["tuned"]["mrr@10"] >= best_single else f" (< {best_single:.3f})")
        blind = mrr("tuned, no labels") + (f" ({row['blind_choice']})" if "blind_choice" in row else "")
        lines.append("| " + " | ".join([
            row["set"], str(row["documents"]), str(row["queries"]), mrr("dense"), mrr("keyword"),
            mrr("hybrid score 0.5"), mrr("hybrid rank 0.5"), tuned, f"{row['tuned_heldout']:.3f}", blind,
            row["tuned_choice"], f"{row['seconds']:.0f}",
        ]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

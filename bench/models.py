"""The packaged models side by side: dense MRR@10 on every shared retrieval set, KorSTS Spearman, and speed.

    python bench/models.py [--data ../shared/data] [--models all-MiniLM-L6-v2,multilingual-e5-small]

Each model runs its auto recipe (MiniLM: mean of the last layer; e5: mean of the last layer with
"query: " on questions and "passage: " on entries) on the path `auto` measured for this machine.
Retrieval is brute-force cosine over the whole corpus (what a flat index returns), so the figures are
the vectors' alone. bertfaq-covidfaq embeds title + text, banking77 text only (its title is the label),
the others text. KorSTS: Spearman between cosine and the gold score on the test split (both sentences
as questions). Speed: texts/s in bulk on 500 Korean and 500 English texts, and the median ms of one
English question, against sentence-transformers on the same folder where it is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.beir import read_beir  # noqa: E402
SETS = {"bertfaq-covidfaq": ("title", "text"), "deepset-covid-qsim": ("text",), "banking77": ("text",),
        "ko-question-pair": ("text",)}


def embedder(resolved, side: str):
    recipe, encoder = resolved.recipe, resolved.encoder
    prefix = recipe.query_prefix if side == "query" else recipe.passage_prefix
    return lambda texts: encoder.embed(texts, layer=recipe.layer, pooling=recipe.pooling, prefix=prefix,
                                       exclude_special=recipe.exclude_special).vectors


def mrr_at_10(resolved, folder: Path, fields) -> float:
    from search.quality.metrics import reciprocal_rank

    ids, texts, queries, qrels = read_beir(folder, fields)
    documents = embedder(resolved, "passage")(texts)
    asked = list(queries)
    questions = embedder(resolved, "query")([queries[q] for q in asked])
    ranks = []
    for start in range(0, len(asked), 512):
        scores = questions[start:start + 512] @ documents.T
        top = np.argsort(-scores, axis=1)[:, :10]
        ranks += [reciprocal_rank([ids[j] for j in row], qrels[asked[start + i]], 10) for i, row in enumerate(top)]
    return float(np.mean(ranks))


def korsts(resolved, data: Path) -> float:
    rows = [line.split("\t") for line in (data / "korsts" / "KorSTS" / "sts-test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    rows = [r for r in rows if len(r) >= 7]
    embed = embedder(resolved, "query")
    a, b = embed([r[5] for r in rows]), embed([r[6] for r in rows])
    cosine, gold = np.sum(a * b, axis=1), np.array([float(r[4]) for r in rows])
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731 (no ties among float cosines)
    return float(np.corrcoef(rank(cosine), rank(gold))[0, 1])


def speed(resolved, data: Path) -> dict:
    korean = read_beir(data / "ko-question-pair" / "beir", ("text",))[1][:500]
    english = list(read_beir(data / "bertfaq-covidfaq" / "beir", ("text",))[2].values())[:500]
    embed = embedder(resolved, "passage")
    figures = {}
    for name, texts in (("korean", korean), ("english", english)):
        embed(texts[:32])
        started = time.perf_counter()
        embed(texts)
        figures[f"{name}_per_s"] = len(texts) / (time.perf_counter() - started)
    ask = embedder(resolved, "query")
    ask(["how do I reset my password?"])
    samples = []
    for _ in range(30):
        started = time.perf_counter()
        ask(["how do I reset my password?"])
        samples.append(time.perf_counter() - started)
    figures["one_question_ms"] = 1000 * float(np.median(samples))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models", default="all-MiniLM-L6-v2,multilingual-e5-small")
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args()
    from indexer.embed.resolve import resolve_recipe

    print(f"# python {shlex.join(sys.argv)}")
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    rows = {}
    for model in args.models.split(","):
        resolved = resolve_recipe(model)
        row = {"path": resolved.encoder.path.label()}
        for name in args.sets.split(","):
            row[name] = mrr_at_10(resolved, args.data / name / "beir", SETS[name])
            print(f"{model} {name} MRR@10 {row[name]:.4f}", flush=True)
        row["korsts"] = korsts(resolved, args.data)
        row.update(speed(resolved, args.data))
        print(json.dumps({model: row}), flush=True)
        rows[model] = row
    names = [*args.sets.split(","), "korsts", "korean_per_s", "english_per_s", "one_question_ms"]
    print("\n| model | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for model, row in rows.items():
        print(f"| {model} | " + " | ".join(f"{row[n]:.4f}" if n in SETS or n == "korsts" else f"{row[n]:.1f}"
                                            for n in names) + " |")


if __name__ == "__main__":
    main()

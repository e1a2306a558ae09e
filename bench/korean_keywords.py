"""Korean keyword search: character bigrams against Kiwi morphemes, then the hybrid weight for Korean.

    nice -n 10 python bench/korean_keywords.py [--data ../shared/data] [--no-hybrid] [--e5-worktree ../wt-e5]

Part 1, keyword only. Each term scheme turns every entry into the string the store writes into its
FTS5 column (`fts5(terms, tokenize='porter unicode61')`, as `indexer.store.folder` creates it), and each
question into the OR query of its quoted terms, ranked by bm25() as `search.keyword.search` does.
Latin words and non-Hangul CJK are cut as today in every scheme; only Korean differs:
  bigram                 today's scheme (indexes without settings["keyword_terms"]): bigrams of the Hangul
                         runs joined across spaces
  kiwi content           Kiwi morphemes (kiwipiepy) with Hangul in them, of the content tags of
                         indexer.store.keywords (nouns NNG/NNP, numerals NR, verb/adjective stems VV/VA, roots XR)
  kiwi content+NNB+NP    the same with dependent nouns (것, 수) and pronouns (저, 나)
  kiwi all               every Kiwi morpheme with Hangul in it (particles and endings too)
  X + bigrams            both term lists in the same column
  kiwi-1                 this code's scheme for new indexes: `keyword_terms(text, "kiwi-1")`
Sets: ko-question-pair (BEIR) and the repository's Korean FAQ (examples/faq_ko.csv, the question
field as `make run` indexes it) with examples/eval_ko. texts/s: the term function over corpus +
queries, one thread, Kiwi already loaded (its load is timed apart), and on longer texts (the FAQ's
answers). Then the real path: build_index on
ko-question-pair and the Searcher in keyword mode (must equal the kiwi-1 row), and the same index
turned into an old one (bigram rows, no scheme in its settings; must equal the bigram row).

Part 2, hybrid on ko-question-pair. For the bundled model (its default recipe) and, when the e5 work
tree provides `e5_model_folder`, multilingual-e5-small ("query: "/"passage: ", mean of the last layer):
the dense top 50 by exact cosine and the keyword top 50 of the real index (kiwi-1, and the old bigram
copy) are fused by `search.keyword.fuse` (score, rank, cosine fusion; dense weight 0.1..0.9), as the
Searcher fuses its candidate pools for k=10; checked against the Searcher's own hybrid at 0.5.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402

from indexer.store import keywords  # noqa: E402
from search.quality.metrics import mean_metrics, query_metrics  # noqa: E402

POOL = 50  # the Searcher's candidate pool for k=10: max(4k + 10, 50)
K = 10
WEIGHTS = [round(0.1 * i, 1) for i in range(1, 10)]


# -- part 1: term schemes ---------------------------------------------------------------------------

def scheme_functions() -> dict:
    def bigrams(text):
        return keywords.keyword_terms(text, "bigram")

    def without_hangul(text):  # Latin words and non-Hangul CJK bigrams, as every scheme has them
        return [t for t in bigrams(text) if not keywords._HANGUL.search(t)]

    def kiwi(tags, with_bigrams):
        def terms(text):
            base = bigrams(text) if with_bigrams else without_hangul(text)
            normalized = keywords.normalize_text(text)
            return base + (keywords.korean_morphemes(normalized, tags) if keywords._HANGUL.search(normalized) else [])
        return terms

    content, more = keywords.CONTENT_TAGS, keywords.CONTENT_TAGS | {"NNB", "NP"}
    return {
        "bigram (today)": bigrams,
        "kiwi content": kiwi(content, False),
        "kiwi content+NNB+NP": kiwi(more, False),
        "kiwi all": kiwi(None, False),
        "kiwi all + bigrams": kiwi(None, True),
        "kiwi content+NNB+NP + bigrams": kiwi(more, True),
        "kiwi-1 = kiwi content + bigrams": lambda text: keywords.keyword_terms(text, "kiwi-1"),
    }


def load_sets(data: Path) -> dict:
    from search.quality.evaluate import load_qrels, load_queries

    sets = {}
    beir = data / "ko-question-pair" / "beir"
    if beir.is_dir():
        corpus = {}
        for line in (beir / "corpus.jsonl").open(encoding="utf-8"):
            record = json.loads(line)
            corpus[record["_id"]] = record["text"]
        sets["ko-question-pair"] = (corpus, load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels.tsv"))
    with (ROOT / "examples" / "faq_ko.csv").open(encoding="utf-8", newline="") as handle:
        corpus = {row["id"]: row["question"] for row in csv.DictReader(handle)}
    eval_ko = ROOT / "examples" / "eval_ko"
    sets["faq_ko"] = (corpus, load_queries(eval_ko / "queries.jsonl"), load_qrels(eval_ko / "qrels.tsv"))
    return sets


def fts_rankings(corpus: dict[str, str], queries: dict, qrels: dict, terms) -> dict[str, list[str]]:
    """An in-memory FTS5 table like the store's, searched like search.keyword: qid -> top K keys."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE keywords USING fts5(terms, tokenize='porter unicode61')")
    keys = list(corpus)
    db.executemany("INSERT INTO keywords(rowid, terms) VALUES (?, ?)",
                   [(i + 1, " ".join(terms(corpus[key]))) for i, key in enumerate(keys)])
    rankings = {}
    for qid in qrels:
        unique = dict.fromkeys(terms(queries[qid]))
        query = " OR ".join('"' + term.replace('"', '""') + '"' for term in unique)
        rows = db.execute("SELECT rowid, -bm25(keywords) AS score FROM keywords WHERE keywords MATCH ? "
                          "ORDER BY score DESC LIMIT ?", [query, K]).fetchall() if unique else []
        rankings[qid] = [keys[rowid - 1] for rowid, _ in rows]
    return rankings


def measure(rankings: dict[str, list[str]], qrels: dict) -> tuple[dict, dict]:
    per_query = {qid: query_metrics(rankings.get(qid, []), relevance) for qid, relevance in qrels.items()}
    return mean_metrics(per_query.values()), per_query


def keyword_table(sets: dict) -> list[dict]:
    started = time.perf_counter()
    keywords.korean_morphemes("한국어")
    print(f"Kiwi loaded in {time.perf_counter() - started:.2f} s", file=sys.stderr)
    rows, baseline = [], {}
    for scheme, terms in scheme_functions().items():
        for set_name, (corpus, queries, qrels) in sets.items():
            qrels = {qid: relevance for qid, relevance in qrels.items() if qid in queries}
            texts = list(corpus.values()) + [queries[qid] for qid in qrels]
            started = time.perf_counter()
            for text in texts:
                terms(text)
            rate = len(texts) / (time.perf_counter() - started)
            metrics, per_query = measure(fts_rankings(corpus, queries, qrels, terms), qrels)
            base = baseline.setdefault(set_name, per_query)
            better = sum(per_query[q]["mrr@10"] > base[q]["mrr@10"] for q in qrels)
            worse = sum(per_query[q]["mrr@10"] < base[q]["mrr@10"] for q in qrels)
            rows.append({"scheme": scheme, "set": set_name, "queries": len(qrels), "mrr@10": metrics["mrr@10"],
                         "recall@10": metrics["recall@10"], "better": better, "worse": worse, "texts/s": rate})
            print(f"{scheme:32s} {set_name:17s} MRR@10 {metrics['mrr@10']:.3f}  recall@10 {metrics['recall@10']:.3f}"
                  f"  +{better}/-{worse}  {rate:8.0f} texts/s", file=sys.stderr, flush=True)
    return rows


def long_text_rates() -> dict[str, float]:
    """texts/s of bigram and kiwi-1 terms on longer texts: the FAQ's answers (~100 characters each)."""
    with (ROOT / "examples" / "faq_ko.csv").open(encoding="utf-8", newline="") as handle:
        answers = [row["answer"] for row in csv.DictReader(handle)] * 4
    rates = {"characters": sum(map(len, answers)) / len(answers)}
    for scheme in keywords.SCHEMES:
        started = time.perf_counter()
        for text in answers:
            keywords.keyword_terms(text, scheme)
        rates[scheme] = len(answers) / (time.perf_counter() - started)
    return rates


# -- the real path ----------------------------------------------------------------------------------

def build_real_index(data: Path, work: Path) -> tuple[Path, Path]:
    """ko-question-pair indexed by build_index (bundled model), and a copy turned into an old index."""
    from indexer import build_index

    beir = data / "ko-question-pair" / "beir"
    corpus = work / "ko-question-pair.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for line in (beir / "corpus.jsonl").open(encoding="utf-8"):
            record = json.loads(line)
            handle.write(json.dumps({"id": record["_id"], "text": record["text"]}, ensure_ascii=False) + "\n")
    folder, legacy = work / "kiwi-1", work / "bigram"
    build_index(corpus, folder, text_fields=["text"], id_field="id", replace=folder.exists())
    shutil.rmtree(legacy, ignore_errors=True)
    shutil.copytree(folder, legacy, ignore=shutil.ignore_patterns("write.lock"))
    as_old_index(legacy)
    return folder, legacy


def as_old_index(folder: Path) -> None:
    """What an index written before kiwi-1 holds: bigram rows, and no scheme in its settings."""
    db = sqlite3.connect(folder / "bertdex.db")
    with db:
        for doc, text in db.execute("SELECT id, text FROM documents").fetchall():
            db.execute("UPDATE keywords SET terms = ? WHERE rowid = ?", [keywords.fts_document(text, "bigram"), doc])
        settings = json.loads(db.execute("SELECT value FROM manifest WHERE name = 'settings'").fetchone()[0])
        settings.pop("keyword_terms", None)
        db.execute("UPDATE manifest SET value = ? WHERE name = 'settings'", [json.dumps(settings, ensure_ascii=False)])
    db.close()


def searcher_figures(folder: Path, queries: dict, qrels: dict, encoder) -> dict:
    from search.quality.evaluate import evaluate
    from search.searcher import Searcher

    searcher = Searcher(folder, encoder=encoder)
    try:
        return {mode: evaluate(searcher, queries, qrels, mode=mode, weight=0.5).metrics
                for mode in ("keyword", "dense", "hybrid")}
    finally:
        searcher.close()


# -- part 2: hybrid ---------------------------------------------------------------------------------

def dense_pools(encoder, layer: int, pooling: str, documents: dict[int, str], questions: dict[str, str],
                query_prefix: str = "", passage_prefix: str = "") -> dict[str, list]:
    ids = list(documents)
    normalize = keywords.normalize_text
    docs = encoder.embed([passage_prefix + normalize(documents[i]) for i in ids], layer=layer, pooling=pooling,
                         windows=True, stride=32, window_length=128)
    asked = encoder.embed([query_prefix + normalize(questions[q]) for q in questions], layer=layer,
                          pooling=pooling).vectors
    scores = asked @ docs.vectors.T
    owners = np.asarray(ids)[docs.owners]
    pools = {}
    for row, qid in enumerate(questions):
        order = np.argsort(-scores[row], kind="stable")
        seen, pool = set(), []
        for passage in order:
            doc = int(owners[passage])
            if doc not in seen:
                seen.add(doc)
                pool.append((doc, float(scores[row, passage]), int(passage)))
            if len(pool) == POOL:
                break
        pools[qid] = pool
    return pools


def keyword_pools(folder: Path, questions: dict[str, str]) -> dict[str, list]:
    from indexer.store.folder import connect
    from search import keyword

    db = connect(folder, readonly=True)
    try:
        return {qid: keyword.search(db, text, POOL) for qid, text in questions.items()}
    finally:
        db.close()


def fused_mrr(dense: dict, words: dict, keys: dict[int, str], qrels: dict, weight: float, fusion: str) -> dict:
    from search import keyword

    rankings = {}
    for qid in qrels:
        if weight >= 1.0:
            ranked = dense[qid]
        elif weight <= 0.0:
            ranked = words[qid]
        else:
            ranked = keyword.fuse(dense[qid], words[qid], weight, fusion)
        rankings[qid] = [keys[doc] for doc, _, _ in ranked[:K]]
    return measure(rankings, qrels)[0]


def hybrid_table(folder: Path, legacy: Path, queries: dict, qrels: dict, models: list) -> list[dict]:
    from indexer.store.folder import connect
    from search import keyword

    questions = {qid: queries[qid] for qid in qrels if qid in queries}
    db = connect(folder, readonly=True)
    documents = dict(db.execute("SELECT id, text FROM documents").fetchall())
    keys = dict(db.execute("SELECT id, key FROM documents").fetchall())
    db.close()
    words = {"kiwi-1": keyword_pools(folder, questions), "bigram": keyword_pools(legacy, questions)}
    rows = []
    for label, encoder, layer, pooling, query_prefix, passage_prefix in models:
        started = time.perf_counter()
        dense = dense_pools(encoder, layer, pooling, documents, questions, query_prefix, passage_prefix)
        print(f"{label}: dense pools in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        for scheme, pools in words.items():
            for fusion in keyword.FUSIONS:
                row = {"model": label, "keywords": scheme, "fusion": fusion}
                for weight in [0.0, *WEIGHTS, 1.0]:
                    row[weight] = fused_mrr(dense, pools, keys, qrels, weight, fusion)
                rows.append(row)
                print(f"{label:28s} {scheme:7s} {fusion:6s} " + " ".join(f"{row[w]['mrr@10']:.3f}" for w in WEIGHTS),
                      file=sys.stderr, flush=True)
    return rows


def models_to_try(e5_worktree: Path | None, resolved) -> list:
    recipe = resolved.recipe
    models = [(f"{recipe.model} ({recipe.pooling}, layer {recipe.layer})", resolved.encoder, recipe.layer,
               recipe.pooling, "", "")]
    if e5_worktree and (e5_worktree / "indexer" / "embed" / "e5_convert.py").is_file():
        import indexer.embed
        from indexer.embed.encoder import Encoder

        # the e5 converter's modules come from that work tree; everything else stays this tree's
        indexer.embed.__path__.append(str(e5_worktree / "indexer" / "embed"))
        from indexer.embed.e5_convert import e5_model_folder

        folder = e5_model_folder(Path.home() / ".cache" / "bertdex" / "models")
        encoder = Encoder(folder, keep_layers=None, backend="torch", precision="fp32")
        models.append(("multilingual-e5-small (mean, last layer, query:/passage:)", encoder, encoder.num_layers,
                       "mean", "query: ", "passage: "))
    return models


# -- report -----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--no-hybrid", action="store_true", help="keyword schemes only (no model is loaded)")
    parser.add_argument("--e5-worktree", type=Path, default=ROOT.parent / "wt-e5",
                        help="a work tree whose indexer/embed/e5_convert.py has e5_model_folder (part 2)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the indexes (default: a temporary one)")
    args = parser.parse_args()
    sets = load_sets(args.data)
    rows = keyword_table(sets)
    long_rates = long_text_rates()
    real = hybrid = None
    if not args.no_hybrid and "ko-question-pair" in sets:
        from indexer.embed.resolve import resolve_recipe

        work = args.work or Path(tempfile.mkdtemp(prefix="bertdex-korean-"))
        work.mkdir(parents=True, exist_ok=True)
        resolved = resolve_recipe()
        folder, legacy = build_real_index(args.data, work)
        _, queries, qrels = sets["ko-question-pair"]
        real = {"kiwi-1": searcher_figures(folder, queries, qrels, resolved.encoder),
                "bigram (old index)": searcher_figures(legacy, queries, qrels, resolved.encoder)}
        hybrid = hybrid_table(folder, legacy, queries, qrels, models_to_try(args.e5_worktree, resolved))
    print()
    print(f"command: nice -n 10 python {shlex.join(sys.argv)}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores (shared with other work)")
    print_keywords(rows, long_rates, real)
    if hybrid:
        print_hybrid(hybrid)


def print_keywords(rows: list[dict], long_rates: dict, real: dict | None) -> None:
    print()
    print("| scheme | set | queries | MRR@10 | recall@10 | queries better/worse than bigram | texts/s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['scheme']} | {row['set']} | {row['queries']} | {row['mrr@10']:.3f} | {row['recall@10']:.3f} | "
              f"{row['better']}/{row['worse']} | {row['texts/s']:,.0f} |")
    print()
    print(f"Longer texts (examples/faq_ko.csv answers, {long_rates['characters']:.0f} characters on average): "
          f"bigram {long_rates['bigram']:,.0f} texts/s, kiwi-1 {long_rates['kiwi-1']:,.0f} texts/s")
    if real:
        print()
        print("Real index (build_index + Searcher, ko-question-pair, bundled model), MRR@10 / recall@10:")
        for name, figures in real.items():
            print(f"  {name}: " + ", ".join(f"{mode} {m['mrr@10']:.3f} / {m['recall@10']:.3f}"
                                             for mode, m in figures.items()) + " (hybrid: score fusion, 0.5)")


def print_hybrid(hybrid: list[dict]) -> None:
    print()
    print("Hybrid on ko-question-pair, MRR@10 by dense weight (0 = keyword only, 1 = dense only):")
    print()
    print("| model | keywords | fusion | " + " | ".join(str(w) for w in [0.0, *WEIGHTS, 1.0]) + " |")
    print("|---|---|---|" + "---|" * (len(WEIGHTS) + 2))
    for row in hybrid:
        cells = [row[w]["mrr@10"] for w in [0.0, *WEIGHTS, 1.0]]
        best = max(cells[1:-1])
        print(f"| {row['model']} | {row['keywords']} | {row['fusion']} | " + " | ".join(
            f"**{c:.3f}**" if c == best and 0 < i < len(cells) - 1 else f"{c:.3f}" for i, c in enumerate(cells)) + " |")
    print()
    for model in dict.fromkeys(row["model"] for row in hybrid):
        mine = [row for row in hybrid if row["model"] == model and row["keywords"] == "kiwi-1"]
        score, weight, fusion = max((row[w]["mrr@10"], w, row["fusion"]) for row in mine for w in WEIGHTS)
        default = next(row for row in mine if row["fusion"] == "score")[0.5]
        recall = next(row for row in mine if row["fusion"] == fusion)[weight]["recall@10"]
        print(f"best for {model} with kiwi-1: {fusion} fusion, weight {weight}: MRR@10 {score:.3f} "
              f"(recall@10 {recall:.3f}); the default (score, 0.5): {default['mrr@10']:.3f}")


if __name__ == "__main__":
    main()

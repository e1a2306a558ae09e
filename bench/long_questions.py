"""Long questions: a question pasted after unrelated chat text, scored by its last tokens or by its best window.

    python bench/long_questions.py [--data ../shared/data] [--sets ...] [--work DIR] [--limit 300]

For each set, up to `--limit` labelled queries (evenly spread) get ~300 tokens of unrelated text in
front of them (English sets: Tatoeba sentences; Korean: nsmc movie reviews; a fixed seed per query),
so every one is over the model's 256-token window. Each is answered by the set's index (built as
bench/quality.py builds it, or reused from --work) with the question embedded as: "head" (the first
256 tokens: bertdex before), "tail" (its last tokens) or "windows" (its 128-token windows, each passage
scored by the best window). Dense and hybrid (score fusion, 0.5) MRR@10; "short" is the same queries
without the chat text. The keyword side sees the whole long question in every variant.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality import SETS, build  # noqa: E402

CHAT_TOKENS = 300
VARIANTS = ("short", "head", "tail", "windows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--work", type=Path, default=None, help="folder of bench/quality.py's indexes (reused if there)")
    parser.add_argument("--limit", type=int, default=300, help="long questions per set at most")
    args = parser.parse_args()

    from indexer.embed.models import DEFAULT_MODEL
    from indexer.embed.resolve import resolve_recipe

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bertdex-long-"))
    encoder = resolve_recipe(DEFAULT_MODEL).encoder
    chat = {"en": english_chat(args.data), "ko": korean_chat(args.data)}
    rows = []
    for name in args.sets.split(","):
        folder = work / name
        if not (folder / "bertdex.db").exists():
            build(name, args.data / name / "beir", folder)
        rows.append(measure(name, args.data / name / "beir", folder, encoder, chat["ko" if name.startswith("ko") else "en"],
                            args.limit))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\ncommand: python {shlex.join(sys.argv)}  ({time.perf_counter() - started:.0f} s)")
    head = ["set", "questions", "chat tokens (mean)"] + [f"{mode} {v}" for mode in ("dense", "hybrid") for v in VARIANTS]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join([row["set"], str(row["questions"]), f"{row['chat_tokens']:.0f}"]
                                + [f"{row[f'{mode} {v}']:.3f}" for mode in ("dense", "hybrid") for v in VARIANTS]) + " |")
    for mode in ("dense", "hybrid"):
        means = {v: np.mean([row[f"{mode} {v}"] for row in rows]) for v in VARIANTS}
        print(f"mean {mode}: " + ", ".join(f"{v} {m:.3f}" for v, m in means.items()))


def english_chat(data: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (data / "tatoeba-laser" / "beir" / "corpus.jsonl").open(encoding="utf-8")]


def korean_chat(data: Path) -> list[str]:
    with gzip.open(data / "nsmc-raw" / "nsmc_raw_reviews.tsv.gz", "rt", encoding="utf-8") as rows:
        next(rows)
        return [line.rstrip("\n").split("\t")[-1] for _, line in zip(range(5000), rows)]


def long_question(question: str, sentences: list[str], tokenizer, seed: int) -> tuple[str, int]:
    """`question` after unrelated sentences adding up to CHAT_TOKENS tokens or more."""
    rng = np.random.default_rng(seed)
    chat, tokens = [], 0
    while tokens < CHAT_TOKENS:
        sentence = sentences[int(rng.integers(len(sentences)))]
        chat.append(sentence)
        tokens += len(tokenizer.tokenize(sentence))
    return " ".join(chat) + " " + question, tokens


def measure(name: str, beir: Path, folder: Path, encoder, sentences: list[str], limit: int) -> dict:
    from indexer.store.keywords import normalize_text
    from search.quality.evaluate import keys_for_metrics, labelled_queries, load_qrels, load_queries
    from search.quality.heldout import spread
    from search.quality.metrics import mean_metrics, query_metrics
    from search.searcher import Searcher

    judged, _ = labelled_queries(load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels.tsv"))
    judged = spread(judged, limit)
    made = [long_question(text, sentences, encoder.tokenizer, i) for i, (_, text, _) in enumerate(judged)]
    asked = [text for text, _ in made]
    searcher = Searcher(folder, encoder=encoder)
    recipe = searcher.manifest.recipe
    row = {"set": name, "questions": len(judged), "chat_tokens": float(np.mean([t for _, t in made]))}
    for mode in ("dense", "hybrid"):
        for variant in VARIANTS:
            texts = [text for _, text, _ in judged] if variant == "short" else asked
            if variant == "head":
                vectors = encoder.embed([normalize_text(t) for t in texts], layer=recipe.layer, pooling=recipe.pooling,
                                        exclude_special=recipe.exclude_special).vectors
            else:
                vectors = searcher.embed(texts, long_questions="windows" if variant == "windows" else "tail")
            results = searcher.search_many(texts, 10, mode=mode, weight=0.5, min_score=float("-inf"), vectors=vectors)
            per_query = [query_metrics(keys_for_metrics([(h.key, h.variants) for h in hits], relevance), relevance)
                         for hits, (_, _, relevance) in zip(results, judged)]
            row[f"{mode} {variant}"] = mean_metrics(per_query)["mrr@10"]
    searcher.close()
    return row


if __name__ == "__main__":
    main()

"""A plain FAQ with no labels: the default mode's ranking and the collection-made "no good answer" cut.

    python bench/plain.py [--data ../shared/data] [--sets bertfaq-covidfaq,...] [--work bench/out/plain] [--sweep]

For each dev set (bertfaq-covidfaq title + text, and its title (the question) alone, deepset-covid-qsim, banking77 text only (its title is
the label: never embedded), ko-question-pair), four Korean checks held out from the choice of the
starting mode (ko-question-pair's train split in two disjoint slices, KorSTS dev + test and KorSTS train:
built here from the data's own files) and both example FAQs (question only, and question + answer),
indexed as `bertdex index` does with nothing but the entries (no groups, no labels): rank-1 and MRR@10 of
dense, keyword, hybrid score fusion at 0.5, the mode an index started in before agreement fusion (English
dense, Korean score fusion at 0.8) and the default mode now; and the collection-made cut
(indexer.ingest.cut): the share of off-topic questions it refuses (examples/out_of_scope.txt and
examples/out_of_scope_more.txt, never the shipped sample the cut is made from) and the share of in-scope
questions whose right top answer it keeps. `--sweep` adds hybrid MRR@10 by fusion x dense weight.
banking77 is limited to its first 30 entries per intent and every 3rd query (2,310 entries, 1,027
queries) to keep the run short on 2 cores. Indexes and question vectors are cached under --work
(ignored by git): a second run embeds nothing, and a cached index takes the starting mode of now.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402

EXAMPLES = ROOT / "examples"
SETS = {  # name -> (fields to embed, language of the off-topic test questions)
    "bertfaq-covidfaq": (["title", "text"], "en"),
    "bertfaq-covidfaq title": (["title"], "en"),  # the question alone, against question + answer above
    "deepset-covid-qsim": (["text"], "en"),
    "banking77": (["text"], "en"),
    "ko-question-pair": (["text"], "ko"),
    # held out: never used to choose a constant (issue 22), built here from the data's own files
    "ko-question-pair train": (["text"], "ko"),  # every 5th pair of the train split, none sharing a text with the dev set
    "korsts": (["text"], "ko"),  # KorSTS dev + test pairs scored >= 4: first sentence -> second
    # held out from the choice of the fusion rule too: measured once, after it was fixed (docs/quality.md)
    "ko-question-pair train b": (["text"], "ko"),  # every 5th pair from the 3rd: none of the pairs above
    "korsts train": (["text"], "ko"),  # KorSTS train (translated by machine), pairs scored >= 4
    "faq_en": (["question"], "en"),
    "faq_en q+a": (["question", "answer"], "en"),
    "faq_ko": (["question"], "ko"),
    "faq_ko q+a": (["question", "answer"], "ko"),
}
BANKING_PER_INTENT, BANKING_QUERY_STEP = 30, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "plain")
    parser.add_argument("--rebuild", action="store_true", help="index again (after a change of the keyword terms)")
    parser.add_argument("--sweep", action="store_true", help="also print hybrid MRR@10 by fusion x dense weight")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    for name in args.sets.split(","):
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}: choose from {', '.join(SETS)}")
        rows.append(measure(name, args.data, args.work, args.rebuild, args.sweep))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"command: python {shlex.join(sys.argv)}  ({time.perf_counter() - started:.0f} s, "
          f"{platform.machine()} {cpu_name()})")
    print(table(rows))
    if args.sweep:
        print()
        print(sweep_table(rows))


def source(name: str, data: Path, work: Path) -> tuple[Path, dict, dict, str]:
    """(entries file, queries, qrels, id field) of a set, written under `work` for the dev sets."""
    from search.quality.evaluate import load_qrels, load_queries

    if name.startswith("faq_"):
        language = name[4:6]
        folder = EXAMPLES / f"eval_{language}"
        return EXAMPLES / f"faq_{language}.csv", load_queries(folder / "queries.jsonl"), load_qrels(folder / "qrels.tsv"), "id"
    if name in HELD_OUT:
        return HELD_OUT[name](data, work)
    beir = data / name.split()[0] / "beir"
    queries, qrels = load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels.tsv")
    corpus = work / f"{name.split()[0]}.corpus.jsonl"
    per_label: dict[str, int] = {}
    kept = set()
    work.mkdir(parents=True, exist_ok=True)
    with corpus.open("w", encoding="utf-8") as handle:
        for line in (beir / "corpus.jsonl").open(encoding="utf-8"):
            record = json.loads(line)
            if name == "banking77":
                per_label[record["title"]] = per_label.get(record["title"], 0) + 1
                if per_label[record["title"]] > BANKING_PER_INTENT:
                    continue
            kept.add(record["_id"])
            handle.write(json.dumps({"id": record["_id"], "title": record.get("title", ""), "text": record["text"]},
                                    ensure_ascii=False) + "\n")
    if name == "banking77":
        ids = sorted(queries, key=lambda q: int(q[1:]))[::BANKING_QUERY_STEP]
        queries = {q: queries[q] for q in ids}
    qrels = {q: {d: s for d, s in judged.items() if d in kept} for q, judged in qrels.items() if q in queries}
    qrels = {q: judged for q, judged in qrels.items() if judged}
    return corpus, {q: queries[q] for q in qrels if q in queries}, qrels, "id"


def question_pair_train(data: Path, work: Path, first: int = 0) -> tuple[Path, dict, dict, str]:
    """ko-question-pair's train split as the dev set's beir/ is its test split: every pair's second question
    is an entry, the first question of a duplicate pair (is_duplicate 0 in this data set, as in beir/) asks
    for it. Every 5th pair from the `first`, none with a text of the test split, no question equal to an
    entry's text."""
    folder = data / "ko-question-pair"
    read = lambda name: list(csv.DictReader((folder / name).open(encoding="utf-8-sig")))  # noqa: E731
    dev = {r[f"question{i}"].strip() for r in read("kor_Pair_test.csv") for i in (1, 2)}
    rows = [r for r in read("kor_pair_train.csv")[first::5]
            if r["question1"].strip() not in dev and r["question2"].strip() not in dev]
    pairs = [(r["question1"].strip(), r["question2"].strip(), r["is_duplicate"] == "0") for r in rows]
    return _pairs_set(f"ko-question-pair-train-{first}", pairs, work)


def korsts(data: Path, work: Path, splits: tuple[str, ...] = ("dev", "test")) -> tuple[Path, dict, dict, str]:
    """KorSTS dev and test (translated by people; train was by machine): every second sentence is an entry,
    the first sentence of a pair scored >= 4 of 5 asks for it. No question equal to an entry's text."""
    pairs = []
    for split in splits:
        with (data / "korsts" / "KorSTS" / f"sts-{split}.tsv").open(encoding="utf-8") as handle:
            next(handle)
            for line in handle:
                *_, score, first, second = line.rstrip("\n").split("\t")
                pairs.append((first.strip(), second.strip(), float(score) >= 4.0))
    return _pairs_set("korsts-" + "-".join(splits), pairs, work)


def _pairs_set(tag: str, pairs: list[tuple[str, str, bool]], work: Path) -> tuple[Path, dict, dict, str]:
    """(entries file, queries, qrels, id field) from (question, entry, relevant) pairs: one entry per distinct
    second text, one query per distinct first text of a relevant pair (its entries: those of every pair)."""
    entries: dict[str, str] = {}
    for _, second, _ in pairs:
        entries.setdefault(second, f"d{len(entries)}")
    asked: dict[str, dict[str, float]] = {}
    for first, second, relevant in pairs:
        if relevant and first not in entries:
            asked.setdefault(first, {})[entries[second]] = 1.0
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"{tag}.corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for text, key in entries.items():
            handle.write(json.dumps({"id": key, "title": "", "text": text}, ensure_ascii=False) + "\n")
    queries = {f"q{i}": text for i, text in enumerate(asked)}
    return corpus, queries, {f"q{i}": judged for i, judged in enumerate(asked.values())}, "id"


HELD_OUT = {"ko-question-pair train": question_pair_train, "korsts": korsts,
            "ko-question-pair train b": lambda data, work: question_pair_train(data, work, first=2),
            "korsts train": lambda data, work: korsts(data, work, ("train",))}


def index(name: str, data: Path, work: Path, rebuild: bool):
    from indexer import build_index

    entries, queries, qrels, id_field = source(name, data, work)
    folder = work / name.replace(" ", "_").replace("+", "")
    if rebuild or not (folder / "bertdex.db").exists():
        build_index(entries, folder, text_fields=SETS[name][0], id_field=id_field, replace=folder.exists())
    else:
        start_as_now(folder)
    return folder, queries, qrels


def start_as_now(folder: Path) -> None:
    """A cached index takes the mode, fusion and weight a new index of its entries starts in now (one commit
    of its settings: its vectors and keywords are the same), so a change of the starting rule needs no --rebuild."""
    from indexer.embed.models import LANGUAGE_SAMPLE
    from indexer.ingest.build import starting_search
    from indexer.ingest.reembed import store_search_settings
    from indexer.store.folder import connect, read_manifest

    db = connect(folder, readonly=True)
    try:
        search = read_manifest(db, folder).settings.search
        texts = [row[0] for row in db.execute("SELECT text FROM documents ORDER BY id LIMIT ?", [LANGUAGE_SAMPLE])]
    finally:
        db.close()
    now = starting_search(texts)
    if (now.mode, now.fusion, now.weight) != (search.mode, search.fusion, search.weight):
        store_search_settings(folder, replace(search, mode=now.mode, fusion=now.fusion, weight=now.weight,
                                              reason=now.reason))


def cached_vectors(searcher, texts: list[str], work: Path, tag: str):
    """The questions' vectors by the index's recipe, from `work` when this recipe already embedded these texts."""
    recipe = searcher.manifest.recipe
    digest = hashlib.sha256(json.dumps([recipe.to_dict(), texts], ensure_ascii=False).encode()).hexdigest()[:16]
    path = work / f"{tag}.{digest}.npy"
    if path.exists():
        return recipe, np.load(path)
    recipe, vectors = searcher.embed_questions(texts)
    np.save(path, vectors)
    return recipe, vectors


def off_topic_tests(language: str) -> list[str]:
    from indexer.ingest.readers import read_questions
    from indexer.store.keywords import hangul_syllable

    found = read_questions(EXAMPLES / "out_of_scope.txt") + read_questions(EXAMPLES / "out_of_scope_more.txt")
    return [q for q in found if (hangul_syllable(q) is not None) == (language == "ko")]


# what a new index started in before the agreement fusion (issue 22): English dense, Korean score fusion at 0.8
BEFORE = {"en": ("dense", "score", 0.5), "ko": ("hybrid", "score", 0.8)}
SWEEP = [(fusion, weight) for fusion in ("score", "rank", "cosine", "agreement") for weight in (0.5, 0.6, 0.7, 0.8, 0.9)]


def answer_as(searcher, fusion: str) -> None:
    """Let `searcher` answer hybrid questions with `fusion` (in memory: the index is not written)."""
    manifest = searcher.manifest
    search = replace(manifest.settings.search, fusion=fusion)
    searcher.manifest = replace(manifest, settings=replace(manifest.settings, search=search))


def measure(name: str, data: Path, work: Path, rebuild: bool, sweep: bool = False) -> dict:
    from search.quality.evaluate import keys_for_metrics
    from search.quality.metrics import query_metrics
    from search.searcher import Searcher

    folder, queries, qrels = index(name, data, work, rebuild)
    searcher = Searcher(folder)
    tag = folder.name
    ids = [q for q in qrels if q in queries]
    texts = [queries[q] for q in ids]
    recipe, vectors = cached_vectors(searcher, texts, work, tag + ".queries")
    language = SETS[name][1]
    tests = off_topic_tests(language)
    _, test_vectors = cached_vectors(searcher, tests, work, tag + ".offtopic")
    search = searcher.manifest.settings.search
    row = {"set": name, "model": recipe.model.split("/")[-1], "documents": searcher.manifest.documents,
           "queries": len(ids), "default mode": search.mode, "default weight": search.weight,
           "default fusion": search.fusion, "cut": search.min_score,
           "cut source": (search.cut or {}).get("source") if hasattr(search, "cut") else None}

    def run(mode: str, fusion: str, weight: float) -> tuple[list[dict], list]:
        answer_as(searcher, fusion)
        results = searcher.search_many(texts, 10, mode=mode, weight=weight, min_score=float("-inf"), vectors=vectors,
                                       recipe=recipe)
        per = [query_metrics(keys_for_metrics([(h.key, h.variants) for h in hits], qrels[q]), qrels[q])
               for q, hits in zip(ids, results)]
        return per, [(hits[0].score if hits else float("-inf"), bool(hits) and m["hit@1"] > 0)
                     for hits, m in zip(results, per)]

    runs = {"dense": ("dense", search.fusion, search.weight), "keyword": ("keyword", search.fusion, search.weight),
            "hybrid 0.5": ("hybrid", "score", 0.5), "before": BEFORE[language],
            "default": (search.mode, search.fusion, search.weight)}
    runs.update({f"{fusion} {weight}": ("hybrid", fusion, weight) for fusion, weight in (SWEEP if sweep else [])})
    tops = {}
    for label, (mode, fusion, weight) in runs.items():
        per, tops[label] = run(mode, fusion, weight)
        row[f"{label} mrr@10"] = float(np.mean([m["mrr@10"] for m in per]))
        row[f"{label} hit@1"] = float(np.mean([m["hit@1"] for m in per]))
    answer_as(searcher, search.fusion)
    row["before mode"] = BEFORE[language][0] + (f" {BEFORE[language][2]}" if BEFORE[language][0] == "hybrid" else "")
    row["best single"] = max(row[f"{m} mrr@10"] for m in ("dense", "keyword", "hybrid 0.5"))
    if search.min_score is not None and search.mode != "keyword":
        refused = searcher.search_many(tests, 1, vectors=test_vectors, recipe=recipe)
        right = [score for score, ok in tops["default"] if ok]
        row["off-topic refused"] = sum(not hits for hits in refused) / len(tests)
        row["off-topic"] = len(tests)
        row["right answers kept"] = sum(score >= search.min_score for score in right) / len(right) if right else None
        row["right answers"] = len(right)
        row["all answered"] = sum(score >= search.min_score for score, _ in tops["default"]) / len(tops["default"])
    searcher.close()
    return row


def default_name(r: dict) -> str:
    if r["default mode"] != "hybrid":
        return r["default mode"]
    return f"hybrid {r['default weight']}" + ("" if r["default fusion"] == "score" else f" {r['default fusion']}")


def table(rows: list[dict]) -> str:
    head = ["set", "model", "docs", "queries", "dense", "keyword", "hybrid 0.5", "before (mode)", "default now (mode)",
            "now - best single", "rank-1 now", "cut", "off-topic refused", "right top answers kept"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cut = "-" if r.get("cut") is None else f"{r['cut']:.3f}"
        refused = f"{r['off-topic refused']:.0%} of {r['off-topic']}" if "off-topic refused" in r else "-"
        kept = f"{r['right answers kept']:.1%} of {r['right answers']}" if r.get("right answers kept") is not None else "-"
        lines.append("| " + " | ".join([
            r["set"], r["model"], str(r["documents"]), str(r["queries"]),
            *(f"{r[f'{m} mrr@10']:.3f}" for m in ("dense", "keyword", "hybrid 0.5")),
            f"{r['before mrr@10']:.3f} ({r['before mode']})", f"{r['default mrr@10']:.3f} ({default_name(r)})",
            f"{r['default mrr@10'] - r['best single']:+.3f}", f"{r['default hit@1']:.3f}", cut, refused, kept]) + " |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    """MRR@10 of hybrid by fusion x dense weight (rows) for each set (columns)."""
    lines = ["| fusion, dense weight | " + " | ".join(r["set"] for r in rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for label in ["dense", "keyword"] + [f"{fusion} {weight}" for fusion, weight in SWEEP]:
        lines.append(f"| {label} | " + " | ".join(f"{r[f'{label} mrr@10']:.3f}" for r in rows) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

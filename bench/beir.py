"""Reading a shared set in BEIR form (corpus.jsonl, queries.jsonl, qrels.tsv) for the benches."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def read_beir(folder: Path, fields: tuple[str, ...]):
    """(corpus ids, corpus texts joined from `fields`, {query id: text} of the judged queries, qrels)."""
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    queries = {row["_id"]: row["text"] for row in map(json.loads, (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines()) if row}
    qrels: dict[str, dict[str, float]] = {}
    for line in (folder / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query, doc, score = line.split("\t")[:3]
        if float(score) > 0:
            qrels.setdefault(query, {})[doc] = float(score)
    texts = [" ".join(str(row.get(f)) for f in fields if row.get(f)) for row in corpus]
    return [row["_id"] for row in corpus], texts, {q: queries[q] for q in queries if q in qrels}, qrels


def nsmc_reviews(data: Path) -> list[str]:
    """Every non-empty review text of nsmc-raw, in file order."""
    reviews = []
    with gzip.open(data / "nsmc-raw" / "nsmc_raw_reviews.tsv.gz", "rt", encoding="utf-8") as rows:
        next(rows)
        for line in rows:
            text = line.rstrip("\n").split("\t")[-1].strip()
            if text:
                reviews.append(text)
    return reviews


def covid_questions(data: Path) -> list[str]:
    """The user questions of bertfaq-covidfaq, in file order."""
    lines = (data / "bertfaq-covidfaq" / "beir" / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]

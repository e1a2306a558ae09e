"""Reading a shared set in BEIR form (corpus.jsonl, queries.jsonl, qrels.tsv) for the benches."""

from __future__ import annotations

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

"""Measure an index against labelled queries (BEIR `queries.jsonl` + `qrels.tsv`): metrics overall and per query.

Only queries that have at least one relevant document (score > 0) and a text are evaluated, as in
BEIR. The score cut (min_score) is not applied: this measures ranking; `search.quality.calibrate` measures
the cut. With `ignore_identical_ids` (BEIR's option, off by default as there), an entry whose key is
the query's id, or whose text is the query's text after normalization, is dropped from that query's
ranking: a help desk that indexes its past questions would otherwise find each question itself.
This module does not tune anything.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import BertdexError
from indexer.store.keywords import normalize_text
from search.quality.metrics import mean_metrics, query_metrics

EVAL_K = 10


@dataclass(frozen=True)
class QueryResult:
    """One evaluated query: what came back (keys, best first) and its metrics."""

    query_id: str
    text: str
    ranked: tuple[str, ...]
    relevant: tuple[str, ...]
    metrics: dict

    def to_dict(self) -> dict:
        return {"query_id": self.query_id, "text": self.text, "ranked": list(self.ranked),
                "relevant": list(self.relevant), **{name: round(v, 6) for name, v in self.metrics.items()}}


@dataclass(frozen=True)
class Evaluation:
    """Mean metrics over `queries` evaluated queries; `missing` qrels queries had no text."""

    folder: str
    mode: str
    weight: float | None
    queries: int
    missing: int
    metrics: dict
    per_query: list[QueryResult] = field(default_factory=list)
    fusion: str | None = None      # hybrid only
    ignored: int = 0               # entries dropped as identical to their query (ignore_identical_ids)

    def describe(self) -> str:
        """mode dense | mode keyword | mode hybrid (score fusion, weight 0.9)"""
        if self.mode != "hybrid":
            return f"mode {self.mode}"
        return f"mode hybrid ({self.fusion} fusion, weight {self.weight})"

    def to_dict(self, per_query: bool = False) -> dict:
        data = {"folder": self.folder, "mode": self.mode, "weight": self.weight, "fusion": self.fusion,
                "queries": self.queries, "missing": self.missing, "ignored_identical": self.ignored,
                **{name: round(v, 6) for name, v in self.metrics.items()}}
        if per_query:
            data["per_query"] = [result.to_dict() for result in self.per_query]
        return data


def load_queries(path: str | Path) -> dict[str, str]:
    """query id -> text from a BEIR queries.jsonl (`{"_id": ..., "text": ...}` per line)."""
    path = Path(path)
    if not path.is_file():
        raise BertdexError(f"{path}: no such file")
    queries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            queries[str(record["_id"])] = str(record["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BertdexError(f"{path}:{number}: expected a JSON object with _id and text") from None
    if not queries:
        raise BertdexError(f"{path}: no queries in the file")
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, float]]:
    """query id -> {document key: grade > 0} from a BEIR qrels.tsv (query-id, corpus-id, score; header optional)."""
    path = Path(path)
    if not path.is_file():
        raise BertdexError(f"{path}: no such file")
    qrels: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            try:
                query, document, grade = row[0], row[1], float(row[2]) if len(row) > 2 else 1.0
            except (IndexError, ValueError):
                raise BertdexError(f"{path}:{number}: expected query-id, corpus-id, score separated by tabs") from None
            if grade > 0:
                qrels.setdefault(query, {})[document] = grade
    if not qrels:
        raise BertdexError(f"{path}: no relevant pairs (score > 0) in the file")
    return qrels


def labelled_queries(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, float]]) -> tuple[list[tuple[str, str, dict]], int]:
    """(query id, text, relevance) for every judged query that has a text, and how many had none."""
    judged = [(qid, queries[qid], dict(relevance)) for qid, relevance in qrels.items() if qid in queries]
    if not judged:
        raise BertdexError("no query of the qrels file is in the queries file: do their ids match?")
    return judged, len(qrels) - len(judged)


def keys_for_metrics(hits: Sequence[tuple[str, Sequence[str]]], relevance: Mapping[str, float]) -> list[str]:
    """The key list metrics see, from hits as (key, group variants).

    A hit stands for its whole group: the group's relevant members are listed at the hit's place
    (so finding a group finds every phrasing of it), else the hit's own key.
    keys_for_metrics([("a", ("a", "b")), ("c", ())], {"b": 1}) -> ["b", "c"]
    """
    keys: list[str] = []
    for key, variants in hits:
        found = [variant for variant in variants if relevance.get(variant, 0) > 0]
        keys.extend(found or [key])
    return keys


def identical_entries(documents: Iterable[tuple[int, str, str]],
                      asked: Sequence[tuple[str | None, str]]) -> list[frozenset]:
    """Per (query id, text): the ids of documents (id, key, text) whose key is that id or whose text is that text.

    Texts compare after normalization (NFKC, whitespace collapsed, case kept).
    identical_entries([(1, "q1", "Hi"), (2, "d", "hi  there")], [("q1", "x"), (None, "hi there")]) -> [{1}, {2}]
    """
    by_key, by_text = {}, {}
    for doc, key, text in documents:
        by_key[key] = doc
        by_text.setdefault(normalize_text(text), set()).add(doc)
    found = []
    for qid, text in asked:
        ids = set(by_text.get(normalize_text(text), ()))
        if qid is not None and qid in by_key:
            ids.add(by_key[qid])
        found.append(frozenset(ids))
    return found


def evaluate(searcher, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, float]], *,
             mode: str | None = None, weight: float | None = None, filters: dict | None = None,
             ignore_identical_ids: bool = False, long_questions: str | None = None) -> Evaluation:
    """Run `searcher` over the judged queries in one batch; metrics at 10."""
    judged, missing = labelled_queries(queries, qrels)
    settings = searcher.manifest.settings.search
    chosen_mode = mode or settings.mode
    chosen_weight = weight if weight is not None else settings.weight
    exclude = None
    if ignore_identical_ids:
        documents = searcher.db.execute("SELECT id, key, text FROM documents").fetchall()
        exclude = identical_entries(documents, [(qid, text) for qid, text, _ in judged])
    results = searcher.search_many([text for _, text, _ in judged], EVAL_K, mode=chosen_mode,
                                   weight=chosen_weight, min_score=float("-inf"), filters=filters, exclude=exclude,
                                   long_questions=long_questions)
    per_query = []
    for (qid, text, relevance), hits in zip(judged, results):
        keys = keys_for_metrics([(hit.key, hit.variants) for hit in hits], relevance)
        per_query.append(QueryResult(qid, text, tuple(keys[:EVAL_K]), tuple(relevance),
                                     query_metrics(keys, relevance)))
    hybrid = chosen_mode == "hybrid"
    return Evaluation(str(searcher.folder), chosen_mode, chosen_weight if hybrid else None,
                      len(per_query), missing, mean_metrics(r.metrics for r in per_query), per_query,
                      settings.fusion if hybrid else None, sum(map(len, exclude or [])))


def evaluate_index(folder: str | Path, queries: str | Path | Mapping, qrels: str | Path | Mapping, *,
                   mode: str | None = None, weight: float | None = None, encoder=None,
                   ignore_identical_ids: bool = False, long_questions: str | None = None) -> Evaluation:
    """evaluate() on an index folder and BEIR files (their paths, or what load_queries/load_qrels read)."""
    from search.searcher import Searcher

    queries = queries if isinstance(queries, Mapping) else load_queries(queries)
    qrels = qrels if isinstance(qrels, Mapping) else load_qrels(qrels)
    searcher = Searcher(folder, encoder=encoder)
    try:
        return evaluate(searcher, queries, qrels, mode=mode, weight=weight,
                        ignore_identical_ids=ignore_identical_ids, long_questions=long_questions)
    finally:
        searcher.close()

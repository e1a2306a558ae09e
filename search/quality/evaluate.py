"""Measure an index against labelled queries (BEIR `queries.jsonl` + `qrels.tsv`): metrics overall and per query.

Only queries that have at least one relevant document (score > 0) and a text are evaluated, as in
BEIR. The score cut (min_score) is not applied: this measures ranking; `search.quality.calibrate` measures
the cut. This module does not tune anything.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import BertdexError
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

    def to_dict(self, per_query: bool = False) -> dict:
        data = {"folder": self.folder, "mode": self.mode, "weight": self.weight, "queries": self.queries,
                "missing": self.missing, **{name: round(v, 6) for name, v in self.metrics.items()}}
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


def evaluate(searcher, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, float]], *,
             mode: str | None = None, weight: float | None = None, filters: dict | None = None) -> Evaluation:
    """Run `searcher` over the judged queries in one batch; metrics at 10."""
    judged, missing = labelled_queries(queries, qrels)
    settings = searcher.manifest.settings.get("search", {})
    chosen_mode = mode or settings.get("mode", "dense")
    chosen_weight = weight if weight is not None else settings.get("weight", 0.5)
    results = searcher.search_many([text for _, text, _ in judged], EVAL_K, mode=chosen_mode,
                                   weight=chosen_weight, min_score=float("-inf"), filters=filters)
    per_query = []
    for (qid, text, relevance), hits in zip(judged, results):
        keys = keys_for_metrics([(hit.key, hit.variants) for hit in hits], relevance)
        per_query.append(QueryResult(qid, text, tuple(keys[:EVAL_K]), tuple(relevance),
                                     query_metrics(keys, relevance)))
    return Evaluation(str(searcher.folder), chosen_mode, chosen_weight if chosen_mode == "hybrid" else None,
                      len(per_query), missing, mean_metrics(r.metrics for r in per_query), per_query)


def evaluate_index(folder: str | Path, queries: str | Path | Mapping, qrels: str | Path | Mapping, *,
                   mode: str | None = None, weight: float | None = None, encoder=None) -> Evaluation:
    """evaluate() on an index folder and BEIR files (their paths, or what load_queries/load_qrels read)."""
    from search.searcher import Searcher

    queries = queries if isinstance(queries, Mapping) else load_queries(queries)
    qrels = qrels if isinstance(qrels, Mapping) else load_qrels(qrels)
    searcher = Searcher(folder, encoder=encoder)
    try:
        return evaluate(searcher, queries, qrels, mode=mode, weight=weight)
    finally:
        searcher.close()

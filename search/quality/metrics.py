"""Retrieval metrics: pure functions over one ranked list of keys and that query's relevance judgements.

`ranked` is a list of document keys, best first; `relevance` maps a relevant key to its grade
(> 0; BEIR qrels). A key may appear at most once in `ranked` (a searcher returns one row per
document). Nothing here searches, reads files or averages over missing queries: see `search.quality.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

METRICS = ("mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10", "hit@1")


def reciprocal_rank(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """1 / rank of the first relevant key within the top k, 0 when none is there.

    reciprocal_rank(["a", "b", "c"], {"c": 1}) -> 0.333...
    """
    for position, key in enumerate(ranked[:k], start=1):
        if relevance.get(key, 0) > 0:
            return 1.0 / position
    return 0.0


def ndcg(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """Normalized discounted cumulative gain at k with linear gains (grade / log2(rank + 1)), as BEIR's trec_eval.

    ndcg(["x", "a"], {"a": 1}) -> (1 / log2(3)) / (1 / log2(2)) = 0.6309...
    """
    gains = [relevance.get(key, 0) for key in ranked[:k]]
    dcg = sum(gain / math.log2(position + 1) for position, gain in enumerate(gains, start=1) if gain > 0)
    ideal = sorted((grade for grade in relevance.values() if grade > 0), reverse=True)[:k]
    best = sum(grade / math.log2(position + 1) for position, grade in enumerate(ideal, start=1))
    return dcg / best if best > 0 else 0.0


def recall(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """Share of the relevant keys found in the top k.

    recall(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, k=2) -> 0.333...
    """
    relevant = {key for key, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def hit(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 1) -> float:
    """1.0 when any of the top k keys is relevant, else 0.0."""
    return 1.0 if any(relevance.get(key, 0) > 0 for key in ranked[:k]) else 0.0


def query_metrics(ranked: Sequence[str], relevance: Mapping[str, float]) -> dict[str, float]:
    """Every metric of METRICS for one query.

    query_metrics(["b", "a"], {"a": 1})["mrr@10"] -> 0.5
    """
    return {
        "mrr@10": reciprocal_rank(ranked, relevance, 10),
        "ndcg@10": ndcg(ranked, relevance, 10),
        "recall@1": recall(ranked, relevance, 1),
        "recall@5": recall(ranked, relevance, 5),
        "recall@10": recall(ranked, relevance, 10),
        "hit@1": hit(ranked, relevance, 1),
    }


def mean_metrics(per_query: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The average of each metric over queries (an empty input gives zeros).

    mean_metrics([{"mrr@10": 1.0}, {"mrr@10": 0.5}]) -> {"mrr@10": 0.75}
    """
    rows = list(per_query)
    if not rows:
        return {name: 0.0 for name in METRICS}
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}

"""Our metrics against ir-measures (trec_eval's definitions through pytrec_eval), per query: on random
rankings with graded judgements, and on the real searcher's run over the example FAQ's labelled queries."""

from __future__ import annotations

import random

import pytest

from search.quality.metrics import METRICS, mean_metrics, query_metrics

ir_measures = pytest.importorskip("ir_measures")
from ir_measures import RR, R, Success, nDCG  # noqa: E402

THEIRS = {"mrr@10": RR @ 10, "ndcg@10": nDCG @ 10, "recall@1": R @ 1, "recall@5": R @ 5, "recall@10": R @ 10,
          "hit@1": Success @ 1}


def their_metrics(qrels: dict, rankings: dict) -> dict[str, dict[str, float]]:
    """query id -> our metric name -> ir-measures' value; a ranking becomes strictly falling scores."""
    run = {qid: {key: float(len(ranked) - i) for i, key in enumerate(ranked)} for qid, ranked in rankings.items()}
    qrels = {qid: {key: int(grade) for key, grade in grades.items()} for qid, grades in qrels.items()}  # trec_eval: integers
    names = {measure: name for name, measure in THEIRS.items()}
    found: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(list(THEIRS.values()), qrels, run):
        found.setdefault(metric.query_id, {})[names[metric.measure]] = metric.value
    return found


def test_the_cross_check_covers_every_metric():
    assert set(THEIRS) == set(METRICS)


def test_random_rankings_with_graded_judgements_agree():
    rng = random.Random(14)
    qrels, rankings = {}, {}
    for q in range(200):
        pool = [f"d{i}" for i in range(30)]
        judged = rng.sample(pool, rng.randint(1, 12))
        grades = {key: rng.choice([0, 1, 1, 2, 3]) for key in judged}
        if not any(grades.values()):
            grades[judged[0]] = 1
        qrels[f"q{q}"] = grades
        rankings[f"q{q}"] = rng.sample(pool, rng.randint(1, 20))
    theirs = their_metrics(qrels, rankings)
    for qid, ranked in rankings.items():
        ours = query_metrics(ranked, qrels[qid])
        assert ours == pytest.approx(theirs[qid], abs=1e-4), qid


def test_the_searchers_run_on_the_example_faq_agrees(faq_index_master, encoder):
    from conftest import EXAMPLES
    from search import Searcher
    from search.quality.evaluate import evaluate, load_qrels, load_queries

    queries = load_queries(EXAMPLES / "eval_en" / "queries.jsonl")
    qrels = load_qrels(EXAMPLES / "eval_en" / "qrels.tsv")
    result = evaluate(Searcher(faq_index_master, encoder=encoder), queries, qrels, mode="dense")
    rankings = {r.query_id: list(r.ranked) for r in result.per_query}
    theirs = their_metrics({qid: qrels[qid] for qid in rankings}, rankings)
    assert len(rankings) == result.queries >= 10
    for r in result.per_query:
        assert r.metrics == pytest.approx(theirs[r.query_id], abs=1e-4), r.query_id
    assert result.metrics == pytest.approx(mean_metrics(theirs.values()), abs=1e-4)

"""Adapting the model to the help desk: deterministic training, no held-out pair in training, a portable
adapted index, and feedback that is bounded and weighed by agreement.

The real MiniLM, real indexes in tmp_path, real subprocesses and HTTP on loopback; training is kept to a
few steps of small batches (the figures that matter are bench/adapt.py's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, run_cli
from test_server import KEY, WRITER, error, running

QUESTIONS = ["I have no idea what my password was. How do I get back into my account?",
             "I'd like to end my Plus membership so it stops renewing.",
             "Where do I type a promo code?"]


def labelled(folder):
    from search.quality.evaluate import load_qrels, load_queries
    from search.quality.heldout import labelled_questions, read_documents
    from indexer.store.folder import connect

    db = connect(folder, readonly=True)
    documents = read_documents(db)
    db.close()
    queries = load_queries(EXAMPLES / "eval_en" / "queries.jsonl")
    qrels = load_qrels(EXAMPLES / "eval_en" / "qrels.tsv")
    return documents, labelled_questions(documents, queries, qrels, 1000, False)


def some_pairs(folder, count=8):
    from search.quality.adapt import labelled_pairs

    documents, questions = labelled(folder)
    return [p.pair for p in labelled_pairs(questions, documents)][:count]


def test_group_pairs_ring_each_group_and_skip_copies():
    from search.quality.adapt import group_pairs

    docs = [{"id": i, "key": k, "text": t, "fields": {}, "group": g} for i, (k, t, g) in enumerate(
        [("a", "one", "x"), ("b", "two", "x"), ("c", "three", "x"), ("d", "One", "y"), ("e", "one", "y")])]
    assert [p.pair.id for p in group_pairs(docs)] == ["g:a>b", "g:b>c", "g:c>a"]  # y: two copies of one text


def test_training_pairs_leave_out_every_pair_a_held_out_question_touches(faq_index):
    from search.quality.adapt import group_pairs, labelled_pairs, touched_by, training_pairs

    documents, questions = labelled(faq_index)
    pairs = labelled_pairs(questions, documents) + group_pairs(documents)
    held = questions.items[:3]
    out = set().union(*(touched_by(q, True) for q in held))
    kept = {p.pair.id for p in training_pairs(pairs, out)}
    theirs = {p.pair.id for p in pairs if p.pair.id.split(">")[0] in {f"q:{q.fold_key}" for q in held}}
    assert theirs and not theirs & kept and len(kept) == len(pairs) - len(theirs)


def test_one_client_cannot_move_the_model():
    from indexer.store.feedback import Verdict
    from search.quality.adapt import feedback_weights

    def verdict(question, key, kind, client):
        return Verdict(0, "", question, key, kind, client=client)

    flood = [verdict(f"question {i}", "en-001", "up", "10.0.0.9") for i in range(200)]
    agreed = [verdict("How do I reset my password?", "en-001", "up", c) for c in ("10.0.0.1", "10.0.0.2")]
    disputed = [verdict("Can I pay later?", "en-002", "up", "10.0.0.1"), verdict("Can I pay later?", "en-002", "down", "10.0.0.2"),
                verdict("Can I pay later?", "en-002", "down", "10.0.0.3")]
    weights = feedback_weights(flood + agreed + disputed)
    assert weights[("how do i reset my password?", "en-001")] == 1.0
    assert ("can i pay later?", "en-002") not in weights
    flooded = sum(w for (q, _), w in weights.items() if q.startswith("question"))
    assert flooded == pytest.approx(1.0)  # 200 verdicts of one client weigh as one agreed pair


@pytest.mark.slow
def test_adaptation_is_deterministic_with_a_seed(faq_index):
    import torch

    from indexer.embed.adapted import train
    from indexer.embed.models import resolve_model_folder

    base, pairs = resolve_model_folder("sentence-transformers/all-MiniLM-L6-v2"), some_pairs(faq_index)
    runs = [train(base, pairs, layer=6, pooling="mean", steps=2, batch=4, seed=seed)[0] for seed in (1, 1, 2)]
    weights = [dict(m.named_parameters())["encoder.layer.5.output.dense.weight"].detach() for m in runs]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
    untouched = dict(torch.nn.Module.named_parameters(type(runs[0]).from_pretrained(str(base))))
    assert not torch.equal(weights[0], untouched["encoder.layer.5.output.dense.weight"])  # it did train


@pytest.mark.slow
def test_held_out_questions_pairs_never_reach_their_fold_model(faq_index):
    from indexer.store.folder import open_manifest
    from search.quality.adapt import group_pairs, labelled_pairs, measure_adapted
    from search.quality.trials import keyword_lists
    from indexer.store.folder import connect

    documents, questions = labelled(faq_index)
    pairs = labelled_pairs(questions, documents) + group_pairs(documents)
    db = connect(faq_index, readonly=True)
    words = keyword_lists(db, questions.items)
    db.close()
    result = measure_adapted(open_manifest(faq_index), documents, questions, words, pairs, folds=2, steps=1)
    assert len(result.trained) == 2
    for trained, held in zip(result.trained, result.held_out):
        assert held and trained and not trained & held
    assert set().union(*result.held_out) >= {p.pair.id for p in pairs if p.pair.id.startswith("q:")}
    dense = result.trials[0]
    assert dense.candidate.model == "adapted" and len(dense.per_query) == len(questions.items)


@pytest.mark.slow
def test_an_adapted_index_is_portable_and_says_where_its_model_came_from(faq_index, tmp_path):
    from indexer.embed.adapted import MODELS
    from indexer.store.folder import open_manifest
    from search.quality.adapt import labelled_pairs, store_adapted
    from search.searcher import Searcher

    documents, questions = labelled(faq_index)
    before = open_manifest(faq_index)
    store_adapted(faq_index, before, labelled_pairs(questions, documents), layer=6, pooling="mean",
                  search=before.settings.search, steps=2)
    manifest = open_manifest(faq_index)
    name = manifest.recipe.model
    assert name.startswith("adapted-") and manifest.recipe.model_checksum == name[len("adapted-"):]
    assert (faq_index / MODELS / name / "model.safetensors").is_file()
    made = manifest.settings.adapted
    assert made["base_model"] == before.recipe.model and made["base_checksum"] == before.recipe.model_checksum
    assert made["pairs"] > 0 and len(made["pairs_hash"]) == 16 and made["steps"] == 2 and made["seed"] == 27
    searcher = Searcher(faq_index, purpose="once")  # the path `query` takes below: answers compare to 4 decimals
    here = [[(h.key, round(h.score, 4)) for h in searcher.search(q, 3)] for q in QUESTIONS]
    searcher.close()
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(faq_index, copy)
    shutil.rmtree(faq_index)  # only the copy holds the model now
    found = run_cli("query", copy, *QUESTIONS, "-k", "3", "--json", check=True)
    there = [[(h["key"], round(h["score"], 4)) for h in json.loads(line)["hits"]] for line in found.stdout.splitlines()]
    assert there == here
    assert run_cli("verify", copy).returncode == 0
    shown = json.loads(run_cli("info", copy, "--json", check=True).stdout)
    assert shown["adapted"]["from"] == before.recipe.model and shown["adapted"]["pairs"] == made["pairs"]


def test_the_feedback_table_stops_at_its_bound(faq_index):
    from indexer.store.feedback import FeedbackRefused, FeedbackStore

    store = FeedbackStore(faq_index, max_verdicts=3, max_per_client=2)
    try:
        store.add("reset my password", "en-001", "up", client="10.0.0.1")
        store.add("reset my password?", "en-001", "up", client="10.0.0.1")
        with pytest.raises(FeedbackRefused, match="this client has given 2 verdicts"):
            store.add("password reset", "en-001", "up", client="10.0.0.1")
        store.add("password reset", "en-001", "up", client="10.0.0.2")
        with pytest.raises(FeedbackRefused, match="the feedback table is full"):
            store.add("password reset", "en-001", "up", client="10.0.0.3")
        assert [v.client for v in store.verdicts()] == ["10.0.0.1", "10.0.0.1", "10.0.0.2"]
    finally:
        store.close()


def test_keyless_feedback_is_refused_and_a_flooding_client_is_stopped_over_http(faq_index, encoder, monkeypatch):
    import indexer.store.feedback as feedback
    from search.server.app import create_app

    monkeypatch.setattr(feedback, "MAX_PER_CLIENT", 2)
    verdict = {"question": "Do you sell gift cards?", "key": "en-025", "verdict": "up"}
    with running(create_app(faq_index, api_key=KEY, encoder=encoder, query_log=False)) as http:
        assert error(http.post("/feedback", json=verdict), 401).startswith("a valid API key is required")
        assert [http.post("/feedback", json=verdict, headers=WRITER).status_code for _ in range(2)] == [200, 200]
        assert "2 verdicts" in error(http.post("/feedback", json=verdict, headers=WRITER), 429)
    store = feedback.FeedbackStore(faq_index, readonly=True)
    assert [v.client for v in store.verdicts()] == ["127.0.0.1", "127.0.0.1"]
    store.close()


def test_scheduled_adaptation_without_new_verdicts_exits_0_saying_so(faq_index):
    result = run_cli("tune", faq_index, "--feedback", "--adapt", "--min-new-verdicts", "5")
    assert result.returncode == 0, result.stderr
    assert "0 new verdicts since the last adaptation, fewer than --min-new-verdicts 5: nothing to do" in result.stdout

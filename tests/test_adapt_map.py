"""The light learned map (indexer.embed.projection): deterministic, cross-fitted in tune beside fine-tuning,
stored in the index folder, applied on every path (a copied folder in a fresh process, the question path
without torch).

The real MiniLM and real indexes in tmp_path; the map's own training is seconds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import EXAMPLES, run_cli
from test_adapt import QUESTIONS, labelled
from test_instant import run_commands, saved_home  # noqa: F401  (a fixture: a home with a saved ONNX choice)
from test_scale import local_ray  # noqa: F401  (a fixture: a local Ray for this module)


def mapped_index(folder):
    """`folder` with a map learned on the example labels (all of them), stored by tune's path; its manifest."""
    from indexer.store.folder import open_manifest
    from search.quality.adapt import labelled_pairs
    from search.quality.adapt_map import store_map

    documents, questions = labelled(folder)
    before = open_manifest(folder)
    store_map(folder, before, labelled_pairs(questions, documents), search=before.settings.search)
    return before, open_manifest(folder)


def test_the_map_is_deterministic_with_a_seed_and_moves_away_from_the_identity(encoder):
    from indexer.embed.projection import train_map

    questions = encoder.embed(QUESTIONS + ["gift cards?", "opening hours"], layer=6, pooling="mean").vectors
    entries = encoder.embed(["reset password", "cancel plus", "promo code", "gift card", "when open"],
                            layer=6, pooling="mean").vectors
    runs = [train_map(questions, entries, steps=20, seed=seed) for seed in (1, 1, 2)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert runs[0].shape == (384, 384) and not np.allclose(runs[0], np.eye(384), atol=1e-4)


@pytest.mark.slow
def test_a_held_out_questions_pairs_never_train_its_fold_map(faq_index):
    from indexer.store.folder import connect, open_manifest
    from search.quality.adapt import group_pairs, labelled_pairs
    from search.quality.adapt_map import measure_map
    from search.quality.trials import keyword_lists

    documents, questions = labelled(faq_index)
    pairs = labelled_pairs(questions, documents) + group_pairs(documents)
    db = connect(faq_index, readonly=True)
    words = keyword_lists(db, questions.items)
    db.close()
    result = measure_map(open_manifest(faq_index), documents, questions, words, pairs, folds=2)
    for trained, held in zip(result.trained, result.held_out):
        assert held and trained and not trained & held
    assert set().union(*result.held_out) >= {p.pair.id for p in pairs if p.pair.id.startswith("q:")}
    dense = result.trials[0]
    assert dense.candidate.model == "map" and len(dense.per_query) == len(questions.items)


@pytest.mark.slow
def test_a_mapped_index_answers_the_same_from_a_copied_folder_in_a_fresh_process(faq_index, tmp_path, encoder):
    from indexer.embed.encoder import Encoder
    from indexer.embed.models import resolve_model_folder
    from indexer.embed.pooling import normalize
    from indexer.embed.projection import load_map
    from search.searcher import Searcher

    before, manifest = mapped_index(faq_index)
    name = manifest.recipe.projection
    assert name.startswith("map-") and (faq_index / "models" / f"{name}.npy").is_file()
    assert manifest.recipe.model == before.recipe.model  # the model itself is untouched
    made = manifest.settings.adapted
    assert made["kind"] == "map" and made["map"] == name and made["pairs"] > 0 and made["seed"] == 27
    searcher = Searcher(faq_index, purpose="once")  # the path `query` takes below: answers compare to 4 decimals
    # the question path maps: its vector is the frozen model's, times the map, normalised
    frozen = Encoder(resolve_model_folder(before.recipe.model), keep_layers=6, backend="torch", precision="fp32")
    expected = normalize(frozen.embed(QUESTIONS[:1], layer=6, pooling="mean").vectors @ load_map(name))
    got = searcher.encoder.embed(QUESTIONS[:1], layer=6, pooling="mean").vectors
    assert np.allclose(got, expected, atol=1e-4)
    here = [[(h.key, round(h.score, 4)) for h in searcher.search(q, 3)] for q in QUESTIONS]
    searcher.close()
    given = Searcher(faq_index, encoder=encoder, purpose="once")  # the session's encoder applies no map: it is not used here
    assert given.encoder is not encoder and [[(h.key, round(h.score, 4)) for h in given.search(q, 3)] for q in QUESTIONS] == here
    given.close()
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(faq_index, copy)
    shutil.rmtree(faq_index)  # only the copy holds the map now
    found = run_cli("query", copy, *QUESTIONS, "-k", "3", "--json", check=True)
    there = [[(h["key"], round(h["score"], 4)) for h in json.loads(line)["hits"]] for line in found.stdout.splitlines()]
    assert there == here
    assert run_cli("verify", copy).returncode == 0
    shown = json.loads(run_cli("info", copy, "--json", check=True).stdout)
    assert shown["recipe"]["map"] == name and shown["adapted"]["kind"] == "map"
    assert shown["adapted"]["weights"].endswith(f"{name}.npy") and shown["adapted"]["pairs"] == made["pairs"]
    refused = run_cli("tune", copy, "--queries", EXAMPLES / "eval_en" / "queries.jsonl",
                      "--qrels", EXAMPLES / "eval_en" / "qrels.tsv")
    assert refused.returncode != 0 and "answers with a learned map" in refused.stderr and "--adapt" in refused.stderr
    (copy / "models" / f"{name}.npy").unlink()
    missing = run_cli("query", copy, QUESTIONS[0])
    assert missing.returncode != 0 and f"learned map {name} is missing" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_a_mapped_index_answers_on_the_saved_onnx_path_without_torch(saved_home, faq_index, faq_index_master):  # noqa: F811
    from search import Searcher

    mapped_index(faq_index)
    out, heavy = run_commands([["query", str(faq_index), *QUESTIONS, "-k", "3", "--json"],
                               ["query", str(faq_index_master), *QUESTIONS, "-k", "3", "--json"]], saved_home)
    assert heavy == []
    lines = out.splitlines()
    reference = Searcher(faq_index, backend="torch", precision="fp32")
    for line, expected in zip(lines, reference.search_many(QUESTIONS, 3)):
        hits = json.loads(line)["hits"]
        assert [h["key"] for h in hits] == [h.key for h in expected]
        assert np.allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-4)
    reference.close()
    mapped = [json.loads(line)["hits"][0]["score"] for line in lines[:len(QUESTIONS)]]
    frozen = [json.loads(line)["hits"][0]["score"] for line in lines[len(QUESTIONS):]]
    assert not np.allclose(mapped, frozen, atol=1e-3)  # the map did move the vectors on this path


@pytest.mark.slow
def test_tune_measures_the_map_beside_fine_tuning_and_stores_what_the_gate_picks(faq_index):
    from indexer.store.folder import open_manifest
    from search.quality.choose import decide, fold_ids
    from search.quality.evaluate import load_qrels, load_queries
    from search.quality.tune import tune_index
    from conftest import EXAMPLES

    queries = load_queries(EXAMPLES / "eval_en" / "queries.jsonl")
    qrels = load_qrels(EXAMPLES / "eval_en" / "qrels.tsv")
    report = tune_index(faq_index, queries=queries, qrels=qrels, adapt=True, adapt_steps=1)
    measured = report.measured
    models = {t.candidate.model for t in measured.trials}
    assert {None, "adapted", "map"} <= models
    mrr = np.vstack([t.per_query for t in measured.trials])
    ndcg = np.vstack([t.per_query_ndcg for t in measured.trials])
    again = decide(mrr, ndcg, 0, fold_ids(list(measured.keys)), list(measured.simple))
    assert (again.picked, again.change) == (measured.decision.picked, measured.decision.change)
    assert report.chosen is measured.trials[again.picked if again.change else 0]  # the gate's pick among all kinds
    recipe = open_manifest(faq_index).recipe
    chosen = report.chosen.candidate.model if report.recipe_changed else None
    assert bool(recipe.projection) == (chosen == "map")
    assert recipe.model.startswith("adapted-") == (chosen == "adapted")


@pytest.mark.slow
def test_ray_workers_embed_new_entries_with_the_map(faq_index, tmp_path, local_ray):  # noqa: F811
    from indexer import add_documents
    from indexer.store.verify import verify_index
    from search.searcher import Searcher

    mapped_index(faq_index)
    new = ["Can I pay for my order with a voucher from a partner shop?", "Is there a student discount on Plus?"]
    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps({"id": f"new-{i}", "group": f"g-new-{i}", "question": q}) + "\n"
                            for i, q in enumerate(new)))
    report = add_documents(faq_index, data, text_fields=["question"], id_field="id", group_field="group", ray="local")
    assert report.added == 2
    searcher = Searcher(faq_index, backend="torch", precision="fp32")
    # a question equal to an entry's text finds it at cosine 1 only when the actor mapped it as this process maps questions
    for i, question in enumerate(new):
        top = searcher.search(question, 1)[0]
        assert top.key == f"new-{i}" and top.score > 0.9999
    searcher.close()
    assert verify_index(faq_index).ok


def test_a_pair_index_is_refused_a_map(resolved):
    from dataclasses import replace

    from indexer.embed.resolve import encoder_for
    from indexer.errors import BertdexError

    other = replace(resolved.recipe, model="other-model", model_checksum="0" * 16)
    recipe = replace(resolved.recipe.with_companion(other, 0.5), projection="map-0123456789abcdef")
    with pytest.raises(BertdexError, match="a learned map is not supported on an index with a companion model"):
        encoder_for(recipe)



@pytest.mark.slow
def test_repair_embeds_a_mapped_index_again_with_its_map(faq_index, encoder):
    from indexer.store.repair import repair_index
    from indexer.store.verify import verify_index
    from search.searcher import Searcher

    mapped_index(faq_index)

    def answers():
        searcher = Searcher(faq_index)
        try:
            return [[(h.key, round(h.score, 4)) for h in searcher.search(q, 3)] for q in QUESTIONS]
        finally:
            searcher.close()

    before = answers()
    report = repair_index(faq_index, encoder=encoder)  # the session's encoder applies no map: not used
    assert report.documents == 50
    assert answers() == before
    assert verify_index(faq_index, text_sample=10).ok


@pytest.mark.slow
def test_serve_answers_a_mapped_index_with_its_map(faq_index, encoder):
    from search.searcher import Searcher
    from search.server.app import create_app
    from test_server import first, running

    mapped_index(faq_index)
    expected = Searcher(faq_index).search_many(QUESTIONS, k=3)
    with running(create_app(faq_index, encoder=encoder, query_log=False)) as http:  # encoder: no map, not used
        for question, hits in zip(QUESTIONS, expected):
            got = first(http.post("/search", json={"question": question, "k": 3}))["hits"]
            assert [h["key"] for h in got] == [h.key for h in hits]
            assert np.allclose([h["score"] for h in got], [h.score for h in hits], atol=1e-4)


@pytest.mark.slow
def test_an_encoder_that_must_measure_its_run_paths_first_still_loads(encoder, tmp_path):
    from indexer.embed.encoder import Encoder

    fresh = Encoder(encoder.folder, keep_layers=6, cache=tmp_path / "no-saved-choice")  # measures before the map is set
    assert fresh.projection is None and fresh.measurements
    assert np.allclose(fresh.embed(QUESTIONS[:1], layer=6, pooling="mean").vectors,
                       encoder.embed(QUESTIONS[:1], layer=6, pooling="mean").vectors, atol=2e-2)

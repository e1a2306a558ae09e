"""Two models answering together (indexer.embed.pair): an index whose vectors join all-MiniLM-L6-v2's to
multilingual-e5-small's scores each entry by the weighted sum of both cosines; every writer, verify and the
searcher use the same joined vectors, and tune measures a pair exactly as eval then reports. Real models,
FAISS and SQLite."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import EXAMPLES, run_cli
from indexer import build_index
from indexer.embed.models import E5
from indexer.embed.recipe import Recipe, joined
from indexer.ingest.embedding import embed_entries, embed_questions
from indexer.ingest.reembed import reembed_index
from indexer.store.verify import verify_index
from search import Searcher
from search.quality.evaluate import evaluate, load_qrels, load_queries
from search.quality.tune import tune_index
from search.searcher import open_manifest

pytestmark = pytest.mark.slow  # the multilingual model runs beside the English one

EN_QUERIES, EN_QRELS = EXAMPLES / "eval_en" / "queries.jsonl", EXAMPLES / "eval_en" / "qrels.tsv"
SHARE = 0.3


@pytest.fixture(scope="module")
def e5():
    from indexer.embed.resolve import resolve_recipe

    return resolve_recipe(E5)


@pytest.fixture(scope="module")
def pair_master(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair") / "index"
    build_index(EXAMPLES / "faq_en.csv", folder, text_fields=["question"], group_field="group", companion=E5,
                companion_share=SHARE)
    return folder


@pytest.fixture
def pair_index(pair_master, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(pair_master, folder, ignore=shutil.ignore_patterns("write.lock"))
    return folder


def test_joined_vectors_score_the_weighted_sum_of_the_cosines():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 4))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    both = joined(a, b, 0.3)
    assert np.allclose(np.linalg.norm(both, axis=1), 1, atol=1e-6)
    assert np.allclose(both @ both[0], 0.7 * (a @ a[0]) + 0.3 * (b @ b[0]), atol=1e-6)


def test_a_recipe_with_a_companion_is_saved_whole_and_old_recipes_still_read(pair_master):
    recipe = open_manifest(pair_master).recipe
    assert recipe.companion.model == E5 and recipe.companion_share == SHARE
    assert recipe.dimension == 768 and recipe.alone().dimension == 384 and recipe.alone().companion is None
    assert recipe.companion.query_prefix == "query: " and recipe.companion.passage_prefix == "passage: "
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    old = {name: value for name, value in recipe.alone().to_dict().items() if not name.startswith("companion")}
    assert Recipe.from_dict(old) == recipe.alone()
    assert recipe.describe() == f"0.7 x {recipe.model} + 0.3 x {E5}"


def test_a_pair_index_scores_each_hit_by_both_models(pair_master, resolved, e5):
    question = "I forgot my password, what now?"
    searcher = Searcher(pair_master)
    hits = searcher.search(question, k=5, mode="dense")
    settings = searcher.manifest.settings
    asking = (searcher.encoder.own, searcher.encoder.companion)
    for encoder in asking:  # two ONNX sessions taking turns: no spinning
        assert getattr(getattr(encoder.runner, "session", None), "spinning", False) is False
    assert hits[0].key == "en-001"
    expected = []
    # questions as the searcher embeds them (its question path), entries as the index was built (the bulk path):
    # on a machine where the two paths differ (bf16 in bulk) both sides must still add up to the hits' scores
    for side, asker in zip((resolved, e5), asking):
        asked = embed_questions(asker, side.recipe, settings, [question]).of(side.recipe.layer, side.recipe.pooling)
        stored = embed_entries(side.encoder, side.recipe, settings, [h.text for h in hits])
        expected.append(stored.of(side.recipe.layer, side.recipe.pooling) @ asked[0])
    want = (1 - SHARE) * expected[0] + SHARE * expected[1]
    # bf16 in bulk: an entry's vector moves ~1e-4..1e-3 with the batch it was embedded in (its padding, the
    # blocking of the matmuls), and these 5 texts were embedded in other batches when the index was built
    tolerance = 1e-4 if all(side.encoder.path.precision == "fp32" for side in (resolved, e5)) else 2e-3
    assert [h.score for h in hits] == pytest.approx(want.tolist(), abs=tolerance)
    alone = expected[0]
    assert not np.allclose(alone, want, atol=1e-3)  # the companion's part is really there
    searcher.warm_up()  # serve's start: each model of the pair prepares its question widths (on OpenVINO)
    searcher.warm_up_long()
    again = searcher.search(question, k=5, mode="dense")
    assert [h.key for h in again] == [h.key for h in hits]
    assert [h.score for h in again] == pytest.approx([h.score for h in hits], abs=1e-5)
    searcher.close()


def test_writers_and_verify_use_the_joined_vectors(pair_index, tmp_path):
    data = tmp_path / "more.jsonl"
    data.write_text('{"id": "new-1", "question": "Can I pay with a gift card?", "group": "new-1"}\n', encoding="utf-8")
    run_cli("add", pair_index, data, "--text-field", "question", check=True)
    report = verify_index(pair_index, text_sample=60)  # each entry embedded again by the pair, found by its vector
    assert report.ok and report.documents == 51, report.lines()
    searcher = Searcher(pair_index)
    assert searcher.search("pay using a gift card", k=1, mode="dense")[0].key == "new-1"
    searcher.close()


def test_tune_measures_a_pair_as_eval_reports_at_every_share(pair_index):
    queries, qrels = load_queries(EN_QUERIES), load_qrels(EN_QRELS)
    report = tune_index(pair_index, queries=queries, qrels=qrels, store=False, layers=[6])
    tried = {(t.candidate.mode, t.candidate.companion, t.candidate.share, t.candidate.weight, t.candidate.fusion):
             t.metrics["mrr@10"] for t in report.trials}
    assert report.current.candidate.companion == E5 and report.current.candidate.share == SHARE
    assert {key[2] for key in tried if key[1] == E5} == {0.3, 0.5, 0.7}
    searcher = Searcher(pair_index)
    fusion = searcher.manifest.settings.search.fusion
    assert tried[("dense", E5, SHARE, None, None)] == pytest.approx(
        evaluate(searcher, queries, qrels, mode="dense").metrics["mrr@10"], abs=1e-4)
    # another share: what tune measured by weighting the two vectors again is what an index re-embedded at it gives
    manifest = reembed_index(pair_index, layer=searcher.manifest.recipe.layer, pooling="mean", companion=E5, share=0.7)
    assert manifest.recipe.companion_share == 0.7 and manifest.recipe.companion.model == E5
    dense = evaluate(searcher, queries, qrels, mode="dense").metrics["mrr@10"]
    hybrid = evaluate(searcher, queries, qrels, mode="hybrid", weight=0.5).metrics["mrr@10"]
    assert tried[("dense", E5, 0.7, None, None)] == pytest.approx(dense, abs=1e-4)
    assert tried[("hybrid", E5, 0.7, 0.5, fusion)] == pytest.approx(hybrid, abs=1e-4)
    searcher.close()


def test_reembedding_without_a_companion_leaves_one_model_and_an_open_searcher_follows(pair_index, resolved):
    searcher = Searcher(pair_index)
    before = searcher.search("I forgot my password", k=1, mode="dense")[0]
    recipe = open_manifest(pair_index).recipe
    manifest = reembed_index(pair_index, layer=recipe.layer, pooling=recipe.pooling)
    assert manifest.recipe == resolved.recipe.alone() and manifest.recipe.dimension == 384
    after = searcher.search("I forgot my password", k=1, mode="dense")[0]  # the searcher reloads both vectors and encoder
    assert after.key == before.key == "en-001" and after.score != pytest.approx(before.score, abs=1e-4)
    assert verify_index(pair_index, text_sample=10).ok
    searcher.close()


def test_the_companion_is_refused_when_it_is_the_index_model(tmp_path):
    result = run_cli("index", tmp_path / "x", EXAMPLES / "faq_en.csv", "--text-field", "question",
                     "--companion", "all-MiniLM-L6-v2")
    assert result.returncode != 0 and "is the index's own model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    missing = run_cli("index", tmp_path / "x", EXAMPLES / "faq_en.csv", "--text-field", "question",
                      "--companion", tmp_path / "no-model")
    assert missing.returncode != 0 and missing.stderr.startswith(f"error: --companion {tmp_path / 'no-model'}: ")
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_tune_moves_a_korean_pair_index_and_it_then_answers_as_measured(tmp_path):
    """The Korean example FAQ on MiniLM with 0.3 x e5: MiniLM reads jamo, so more e5 (a larger share, or
    e5 alone) wins significantly; tune re-embeds to its choice and a fresh searcher answers as it measured."""
    from indexer.ingest.reembed import store_search_settings
    from indexer.store.settings import SearchSettings

    folder = tmp_path / "ko"
    build_index(EXAMPLES / "faq_ko.csv", folder, text_fields=["question"], group_field="group",
                model="all-MiniLM-L6-v2", companion=E5, companion_share=SHARE)
    store_search_settings(folder, SearchSettings(mode="dense"))
    queries, qrels = load_queries(EXAMPLES / "eval_ko" / "queries.jsonl"), load_qrels(EXAMPLES / "eval_ko" / "qrels.tsv")
    report = tune_index(folder, queries=queries, qrels=qrels, layers=[6])
    chosen = report.chosen.candidate
    assert report.decision.change and report.recipe_changed and report.decision.p_value < 0.05, report.to_dict()
    assert (chosen.model, chosen.companion) != (None, E5) or chosen.share > SHARE
    recipe = open_manifest(folder).recipe
    assert recipe.model == (chosen.model or "sentence-transformers/all-MiniLM-L6-v2")
    assert (recipe.companion.model if recipe.companion else None, recipe.companion_share or None) == (chosen.companion, chosen.share)
    searcher = Searcher(folder)
    assert evaluate(searcher, queries, qrels).metrics["mrr@10"] == pytest.approx(report.chosen.metrics["mrr@10"], abs=1e-4)
    searcher.close()
    assert verify_index(folder, text_sample=10).ok


def test_tune_measures_a_pair_on_long_texts_as_eval_reports(tmp_path):
    """Entries cut into 64-token windows: the companion embeds each window's characters (nothing reused)."""
    import csv
    import json

    filler = ("Our offices are closed on public holidays. The weather was mild for most of the spring. "
              "Parcels are sorted at the regional hub before they reach the local depot. ")  # ~420 tokens an entry
    data = tmp_path / "long.jsonl"
    with open(EXAMPLES / "faq_en.csv", encoding="utf-8") as handle, data.open("w", encoding="utf-8") as out:
        judged = {key for relevant in load_qrels(EN_QRELS).values() for key in relevant}
        for i, row in enumerate([row for row in csv.DictReader(handle) if row["id"] in judged][:10]):
            text = f"{filler * (2 + 2 * (i % 5))}{row['question']} {row['answer']} {filler * (10 - 2 * (i % 5))}"
            out.write(json.dumps({"id": row["id"], "text": text}) + "\n")
    folder = tmp_path / "index"
    report = build_index(data, folder, window_length=64, companion=E5, companion_share=0.5)
    assert report.split_texts == 10
    queries, qrels = load_queries(EN_QUERIES), load_qrels(EN_QRELS)
    tuned = tune_index(folder, queries=queries, qrels=qrels, store=False, layers=[6])
    tried = {(t.candidate.mode, t.candidate.companion, t.candidate.share): t.metrics["mrr@10"] for t in tuned.trials
             if t.candidate.mode == "dense"}
    searcher = Searcher(folder)
    figure = evaluate(searcher, queries, qrels, mode="dense").metrics["mrr@10"]
    assert figure > 0.2 and tried[("dense", E5, 0.5)] == pytest.approx(figure, abs=1e-4)
    searcher.close()

"""Tuning out of sample and evaluation as BEIR does it: one embedding path for entries (windows of
window_length), the significance gate, self-matches (ignore_identical_ids) and long questions, on the
real model, FAISS and SQLite."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from conftest import EXAMPLES, run_cli
from indexer import build_index
from indexer.ingest.embedding import embed_questions, tail_texts
from indexer.ingest.reembed import reembed_index, store_search_settings
from indexer.store.settings import SearchSettings
from search import Searcher
from search.collapse import collapse
from search.quality.choose import decide, fold_ids, paired_test
from search.quality.evaluate import evaluate, identical_entries, load_qrels, load_queries
from search.quality.tune import tune_index
from search.searcher import open_manifest

EN_QUERIES, EN_QRELS = EXAMPLES / "eval_en" / "queries.jsonl", EXAMPLES / "eval_en" / "qrels.tsv"
FILLER = ("Our offices are closed on public holidays. The weather was mild for most of the spring. "
          "Parcels are sorted at the regional hub before they reach the local depot. ")


def _faq_rows() -> list[dict]:
    with open(EXAMPLES / "faq_en.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def long_index(tmp_path_factory, resolved):
    """20 entries of the example FAQ, each buried in ~420 tokens of unrelated text, cut into 64-token windows."""
    folder = tmp_path_factory.mktemp("long")
    data = folder / "long.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        for i, row in enumerate(_faq_rows()[:20]):
            before, after = FILLER * (2 + 2 * (i % 5)), FILLER * (10 - 2 * (i % 5))
            text = f"{before}{row['question']} {row['answer']} {after}"
            handle.write(json.dumps({"id": row["id"], "text": text}) + "\n")
    index = folder / "index"
    report = build_index(data, index, window_length=64, resolved=resolved)
    assert report.split_texts == 20 and report.window_length == 64 and report.max_length == 256
    return index


@pytest.mark.slow
def test_tune_on_long_texts_measures_what_eval_then_reports(long_index, encoder, tmp_path):
    import shutil

    folder = tmp_path / "index"
    shutil.copytree(long_index, folder)
    queries, qrels = load_queries(EN_QUERIES), load_qrels(EN_QRELS)
    report = tune_index(folder, queries=queries, qrels=qrels, encoder=encoder, layers=[5, 6])
    tried = {(t.candidate.mode, t.candidate.layer, t.candidate.pooling): t.metrics["mrr@10"] for t in report.trials
             if t.candidate.model is None and t.candidate.companion is None}
    searcher = Searcher(folder, encoder=encoder)
    assert tried[("dense", 6, "mean")] == pytest.approx(evaluate(searcher, queries, qrels, mode="dense").metrics["mrr@10"], abs=1e-4)
    assert tried[("keyword", 6, "mean")] == pytest.approx(evaluate(searcher, queries, qrels, mode="keyword").metrics["mrr@10"], abs=1e-4)
    after = evaluate(Searcher(folder, encoder=encoder), queries, qrels).metrics["mrr@10"]
    assert round(after, 4) == round(report.chosen.metrics["mrr@10"], 4)


@pytest.mark.slow
def test_reembedding_with_the_same_recipe_keeps_the_windows(long_index, tmp_path):
    import shutil

    folder = tmp_path / "index"
    shutil.copytree(long_index, folder)
    before = open_manifest(folder)
    after = reembed_index(folder, layer=before.recipe.layer, pooling=before.recipe.pooling)
    assert after.vectors == before.vectors > before.documents  # 64-token windows, not re-cut at 256
    # the collection's cut is made again from the re-embedded vectors: equal where the bulk path is fp32, within
    # bf16's rounding where this machine embeds in bulk with bf16
    assert after.settings.search.min_score == pytest.approx(before.settings.search.min_score, abs=2e-3)
    same_cut = dataclasses.replace(after.settings.search, min_score=before.settings.search.min_score)
    assert dataclasses.replace(after.settings, search=same_cut) == before.settings


def test_the_gate_refuses_a_change_on_noise_and_takes_a_real_gain():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    same = np.vstack([base, base])                  # two identical settings
    decision = decide(same, same, 0, fold_ids([str(i) for i in range(300)]))
    assert not decision.change and decision.gain == 0 and decision.p_value == 1.0
    noisy = np.vstack([base, np.clip(base + rng.normal(0, 0.05, 300), 0, 1)])  # the same setting, re-measured
    decision = decide(noisy, noisy, 0, fold_ids([str(i) for i in range(300)]))
    assert not decision.change and decision.p_value >= 0.05
    better = np.vstack([base, np.clip(base + 0.1, 0, 1)])
    decision = decide(better, better, 0, fold_ids([str(i) for i in range(300)]))
    assert decision.change and decision.best == 1 and decision.p_value < 0.001 and decision.interval[0] > 0.05
    p_value, (low, high) = paired_test(np.asarray([0.5, -0.5] * 50))
    assert p_value > 0.9 and low < 0 < high
    # the gate asks one thing: is the gain above 0? A loss is never significant; a gain's p is half the two-sided one
    assert paired_test(rng.normal(-0.02, 0.1, 400), greater=True)[0] > 0.9
    noise = np.random.default_rng(7).normal(0, 0.1, 400)
    gain = noise - noise.mean() + 0.008  # a mean gain of 0.008, about 1.6 standard errors
    two_sided, one_sided = paired_test(gain)[0], paired_test(gain, greater=True)[0]
    assert 0.05 < two_sided < 0.5 and one_sided == pytest.approx(two_sided / 2, rel=0.15)


def test_the_rule_prefers_a_plain_setting_unless_the_wide_search_wins_out_of_sample():
    rng = np.random.default_rng(1)
    keyword = rng.random(200)
    current = np.clip(keyword - 0.3, 0, 1)            # dense, far worse
    lucky = keyword + np.where(np.arange(200) == 7, 0.5, 0.0)  # one question's luck: wins in sample only
    mrr = np.vstack([current, keyword, lucky])
    decision = decide(mrr, mrr, 0, fold_ids([str(i) for i in range(200)]), plain=[0, 1])
    assert decision.best == 2 and decision.picked == 1 and decision.change and decision.chosen == 1


def test_folds_keep_a_group_together():
    folds = fold_ids(["a", "b", "a", "c", "b", "a"], folds=2)
    assert folds[0] == folds[2] == folds[5] and folds[1] == folds[4]


def test_collapse_keeps_the_best_row_per_document_then_per_group():
    ranked = [(1, .9, 1), (2, .8, 2), (1, .7, 3), (3, .6, 4), (4, .5, 5)]
    assert collapse(ranked, {1: "g", 2: "g", 3: None, 4: None}) == [(1, .9, 1), (3, .6, 4), (4, .5, 5)]
    assert collapse(ranked, {1: "g", 2: "g", 3: None}, keep=lambda doc: doc != 1, limit=1) == [(2, .8, 2)]


def test_identical_entries_match_by_id_or_normalized_text():
    documents = [(1, "q1", "Hello there"), (2, "d2", "ＨＥＬＬＯ  world"), (3, "d3", "other")]
    assert identical_entries(documents, [("q1", "x"), (None, "HELLO world"), ("q9", "nothing")]) == \
        [frozenset({1}), frozenset({2}), frozenset()]


def test_ignore_identical_ids_drops_self_matches(tmp_path, resolved, faq_index_master, encoder):
    """The FAQ plus the evaluation questions themselves (as a help desk indexing its past questions)."""
    queries = load_queries(EN_QUERIES)
    data = tmp_path / "with_questions.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        for row in _faq_rows():
            handle.write(json.dumps({"id": row["id"], "text": row["question"]}) + "\n")
        for qid, text in queries.items():
            handle.write(json.dumps({"id": qid, "text": text}) + "\n")
    folder = tmp_path / "index"
    build_index(data, folder, resolved=resolved)
    qrels = load_qrels(EN_QRELS)
    plain = evaluate(Searcher(faq_index_master, encoder=encoder), queries, qrels, mode="dense").metrics["mrr@10"]
    with_self = evaluate(Searcher(folder, encoder=encoder), queries, qrels, mode="dense")
    ignored = evaluate(Searcher(folder, encoder=encoder), queries, qrels, mode="dense", ignore_identical_ids=True)
    assert with_self.per_query[0].ranked[0] == "q1"  # each question finds itself first
    assert with_self.metrics["mrr@10"] <= 0.5 < plain
    assert ignored.ignored == 12 and ignored.metrics["mrr@10"] == pytest.approx(plain, abs=1e-6)
    shown = run_cli("eval", folder, "--queries", EN_QUERIES, "--qrels", EN_QRELS, "--mode", "dense",
                    "--ignore-identical-ids", check=True)
    assert "12 entries identical to their query ignored" in shown.stdout and f"mrr@10 {plain:.4f}" in shown.stdout


def test_a_long_question_keeps_its_last_tokens_or_its_windows(faq_index_master, encoder):
    searcher = Searcher(faq_index_master, encoder=encoder)
    question = "I forgot my password, how do I reset it?"
    chat = FILLER * 12 + question
    assert tail_texts(encoder, [chat])[0].endswith(question) and len(tail_texts(encoder, [chat])[0]) < len(chat)
    assert tail_texts(encoder, [question]) == [question]
    manifest = searcher.manifest
    windows = embed_questions(encoder, manifest.recipe, manifest.settings, [question, chat], long_questions="windows")
    assert (windows.owners == 0).sum() == 1 and (windows.owners == 1).sum() > 1
    # the question's own window finds its entry; the tail (240 tokens of filler, then the question) may not
    assert searcher.search_many([chat], 3, mode="dense", long_questions="windows")[0][0].key == "en-001"
    assert searcher.search_many([chat], 3, mode="dense")[0][0].key == "en-001"  # windows: the default
    assert searcher.search_many([question], 3, mode="dense", long_questions="windows")[0][0].key == "en-001"


@pytest.mark.slow
def test_tune_moves_a_korean_faq_indexed_with_the_english_model_to_the_multilingual_one(tmp_path):
    """MiniLM splits Hangul into jamo; tune measures the other bundled model too, finds it significantly
    better, re-embeds the index with it, and the index then answers as tune measured."""
    from indexer.embed.models import E5

    folder = tmp_path / "ko"
    build_index(EXAMPLES / "faq_ko.csv", folder, text_fields=["question"], group_field="group",
                model="all-MiniLM-L6-v2")
    assert open_manifest(folder).settings.search.mode == "hybrid"  # a Korean collection starts hybrid
    store_search_settings(folder, SearchSettings(mode="dense"))  # as an owner who set dense has it
    queries, qrels = load_queries(EXAMPLES / "eval_ko" / "queries.jsonl"), load_qrels(EXAMPLES / "eval_ko" / "qrels.tsv")
    report = tune_index(folder, queries=queries, qrels=qrels)
    chosen = report.chosen.candidate
    assert chosen.model == E5 and report.decision.change and report.recipe_changed, report.to_dict()
    assert report.decision.p_value < 0.05 and report.decision.gain > 0.2
    manifest = open_manifest(folder)
    assert manifest.recipe.model == E5 and manifest.recipe.passage_prefix == "passage: "
    assert manifest.settings.model_reason.startswith("tune: multilingual-e5-small")
    searcher = Searcher(folder)  # a fresh one, as the server would open it
    after = evaluate(searcher, queries, qrels).metrics["mrr@10"]
    assert after == pytest.approx(report.chosen.metrics["mrr@10"], abs=1e-4)
    assert searcher.search("비밀번호가 생각이 안 나요", k=1)[0].key == "ko-001"
    searcher.close()


def test_tune_same_model_tries_only_the_index_model(faq_index):
    shown = run_cli("tune", str(faq_index), "--dry-run", "--same-model", check=True).stdout
    assert "dry run: nothing stored" in shown and "multilingual-e5-small" not in shown

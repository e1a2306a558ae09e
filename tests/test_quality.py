"""Answer quality: metrics, keyword search kept in step with the documents, Korean keywords, tuning,
the "no good answer" cut, and tokenizer warnings, on the real model, FAISS and SQLite."""

from __future__ import annotations

import json
import math

import pytest

from conftest import EXAMPLES, run_cli
from indexer import BertdexError
from indexer.ingest.build import add_documents, delete_documents, upsert_entries
from indexer.store.keywords import keyword_terms
from indexer.ingest.readers import Fields, read_entries
from indexer.store.folder import IndexWriter, Manifest, connect
from indexer.store.verify import verify_index
from search import Searcher, keyword
from search.quality.calibrate import calibrate_index, choose_cut, read_questions
from search.quality.evaluate import evaluate, keys_for_metrics, load_qrels, load_queries
from search.quality.metrics import hit, mean_metrics, ndcg, query_metrics, recall, reciprocal_rank
from search.searcher import open_manifest
from search.quality.heldout import group_questions
from search.quality.tune import tune_index

EN_QUERIES, EN_QRELS = EXAMPLES / "eval_en" / "queries.jsonl", EXAMPLES / "eval_en" / "qrels.tsv"


# -- metrics, against hand-computed values ------------------------------------------------------------


def test_reciprocal_rank_is_one_over_the_first_relevant_rank_within_ten():
    assert reciprocal_rank(["a", "b", "c"], {"c": 1, "b": 1}) == 0.5
    assert reciprocal_rank(["x"] * 0 + [f"d{i}" for i in range(10)] + ["a"], {"a": 1}) == 0.0
    assert reciprocal_rank([], {"a": 1}) == 0.0


def test_ndcg_uses_graded_gains_and_the_ideal_order():
    # ranked: gains 0, 2, 1 -> dcg = 2/log2(3) + 1/log2(4); ideal 2, 1 -> 2/log2(2) + 1/log2(3)
    expected = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    assert ndcg(["x", "a", "b"], {"a": 2, "b": 1}) == pytest.approx(expected)
    assert ndcg(["a", "b"], {"a": 2, "b": 1}) == pytest.approx(1.0)
    assert ndcg(["x", "y"], {"a": 1}) == 0.0


def test_recall_and_hit_at_cutoffs():
    relevance = {"a": 1, "b": 1, "c": 1, "d": 1}
    ranked = ["a", "x", "b", "y", "z", "c"]
    assert recall(ranked, relevance, 1) == 0.25
    assert recall(ranked, relevance, 5) == 0.5
    assert recall(ranked, relevance, 10) == 0.75
    assert hit(ranked, relevance, 1) == 1.0
    assert hit(["x", "a"], relevance, 1) == 0.0


def test_query_metrics_and_their_mean():
    first = query_metrics(["b", "a"], {"a": 1})
    second = query_metrics(["a"], {"a": 1})
    assert first == {"mrr@10": 0.5, "ndcg@10": pytest.approx(1 / math.log2(3)), "recall@1": 0.0,
                     "recall@5": 1.0, "recall@10": 1.0, "hit@1": 0.0}
    assert mean_metrics([first, second])["mrr@10"] == 0.75
    assert mean_metrics([first, second])["hit@1"] == 0.5


def test_a_group_hit_stands_for_its_relevant_members():
    assert keys_for_metrics([("a", ("a", "b")), ("c", ())], {"b": 1}) == ["b", "c"]
    assert keys_for_metrics([("a", ("a", "b"))], {"a": 1, "b": 1}) == ["a", "b"]


def test_beir_files_load_and_errors_name_the_line(tmp_path):
    assert load_queries(EN_QUERIES)["q1"].startswith("I have no idea what my password was")
    assert load_qrels(EN_QRELS)["q1"] == {"en-001": 1.0, "en-005": 1.0, "en-006": 1.0}
    broken = tmp_path / "queries.jsonl"
    broken.write_text('{"_id": "q1", "text": "ok"}\n{"text": "no id"}\n')
    with pytest.raises(BertdexError, match="queries.jsonl:2"):
        load_queries(broken)


# -- keyword search ------------------------------------------------------------------------------------


def keyword_keys(folder, question, n=5):
    db = connect(folder, readonly=True)
    try:
        ids = [doc for doc, _, _ in keyword.search(db, question, n)]
        keys = dict(db.execute("SELECT id, key FROM documents").fetchall())
        return [keys[i] for i in ids]
    finally:
        db.close()


def test_fts5_follows_add_update_and_delete(faq_index, encoder, tmp_path):
    changes = tmp_path / "changes.csv"
    changes.write_text("id,group,question,answer,category\n"
                       "en-900,g-new,Can I pay with zorblax tokens?,No.,billing\n"
                       "en-001,g-password-reset,How do I recover a forgotten passphrase?,Use the link.,account\n")
    add_documents(faq_index, changes, encoder=encoder)
    assert keyword_keys(faq_index, "zorblax")[:1] == ["en-900"]
    assert keyword_keys(faq_index, "passphrase")[:1] == ["en-001"]
    old_text_hits = keyword_keys(faq_index, "forgot", 50)
    assert "en-001" not in old_text_hits  # its old words left the keyword table with its old text
    delete_documents(faq_index, ["en-900"])
    assert keyword_keys(faq_index, "zorblax") == []
    db = connect(faq_index, readonly=True)
    counts = db.execute("SELECT (SELECT count(*) FROM keywords), (SELECT count(*) FROM documents)").fetchone()
    db.close()
    assert counts[0] == counts[1] == 50
    assert verify_index(faq_index).ok


def test_korean_terms_do_not_depend_on_spacing():
    assert keyword_terms("비밀번호 변경", "bigram") == keyword_terms("비밀번호변경", "bigram") == ["비밀", "밀번", "번호", "호변", "변경"]
    assert keyword_terms("Reset PIN") == ["reset", "pin"]


@pytest.fixture(scope="module")
def ko_index(tmp_path_factory, resolved):
    """The Korean example FAQ, embedded with the session's encoder."""
    folder = tmp_path_factory.mktemp("ko") / "index"
    settings = {"text_fields": ["question"], "id_field": None, "group_field": "group", "window": True, "stride": 32}
    entries = [e for e in read_entries(EXAMPLES / "faq_ko.csv", Fields(("question",), None, "group"))]
    with IndexWriter.open(folder, new=Manifest(recipe=resolved.recipe, settings=settings)) as writer:
        upsert_entries(writer, resolved.encoder, entries)
        writer.commit()
    return folder


def test_korean_keyword_match_survives_spacing_differences(ko_index, encoder):
    searcher = Searcher(ko_index, encoder=encoder)
    spaced = searcher.search("비밀 번호 변경", k=1, mode="keyword")
    joined = searcher.search("비밀번호변경", k=1, mode="keyword")
    assert spaced[0].key == joined[0].key == "ko-003"  # "로그인한 상태에서 비밀번호 변경은 어디서 하나요?"
    assert spaced[0].score == pytest.approx(joined[0].score)


def test_cosine_fusion_keeps_the_dense_score_scale():
    dense = [(1, 0.62, 10), (2, 0.40, 20)]
    words = [(2, 8.0, None), (3, 2.0, None)]
    fused = keyword.fuse(dense, words, 0.5, "cosine")
    assert [doc for doc, _, _ in fused] == [2, 1, 3]
    assert fused[0][1] == pytest.approx(0.5 * 0.40 + 0.5 * 1.0)
    assert fused[2][1] == pytest.approx(0.5 * 0.40)  # missing on the dense side: its lowest cosine
    with pytest.raises(BertdexError, match="unknown fusion"):
        keyword.fuse(dense, words, 0.5, "max")


# -- tuning -------------------------------------------------------------------------------------------


def test_group_held_out_questions_never_see_themselves_or_a_copy():
    documents = [
        {"id": 1, "key": "a", "text": "reset my password", "fields": {}, "group": "g"},
        {"id": 2, "key": "b", "text": "forgot my password", "fields": {}, "group": "g"},
        {"id": 3, "key": "c", "text": "reset my password", "fields": {}, "group": "g"},
        {"id": 4, "key": "d", "text": "alone", "fields": {}, "group": "h"},
    ]
    found = group_questions(documents, None, 100)
    heldout, source = found.items, found.source
    by_text = {}
    for question in heldout:
        by_text.setdefault(question.text, []).append(question)
    assert {q.text for q in heldout} == {"reset my password", "forgot my password"}
    for question in by_text["reset my password"]:
        assert question.relevance == {"b": 1} and question.exclude == frozenset({1, 3})
    assert by_text["forgot my password"][0].relevance == {"a": 1, "c": 1}
    assert "group" in source


def test_tune_without_groups_or_labels_says_what_it_needs():
    documents = [{"id": 1, "key": "a", "text": "x", "fields": {}, "group": None}]
    with pytest.raises(BertdexError, match="--queries and --qrels"):
        group_questions(documents, None, 100)


def test_tuned_index_is_at_least_as_good_as_each_single_mode(faq_index, encoder):
    queries, qrels = load_queries(EN_QUERIES), load_qrels(EN_QRELS)
    before = {mode: evaluate(Searcher(faq_index, encoder=encoder), queries, qrels, mode=mode).metrics["mrr@10"]
              for mode in ("dense", "keyword", "hybrid")}
    report = tune_index(faq_index, queries=queries, qrels=qrels, encoder=encoder)
    tried = {(t.candidate.mode, t.candidate.weight, t.candidate.fusion, t.candidate.layer, t.candidate.pooling):
             t.metrics["mrr@10"] for t in report.trials if t.candidate.model is None and t.candidate.companion is None}
    # the tuner's own measurement of the untuned modes equals the real searcher's
    assert tried[("dense", None, None, 6, "mean")] == pytest.approx(before["dense"])
    assert tried[("keyword", None, None, 6, "mean")] == pytest.approx(before["keyword"])
    assert tried[("hybrid", 0.5, "score", 6, "mean")] == pytest.approx(before["hybrid"])
    after = evaluate(Searcher(faq_index, encoder=encoder), queries, qrels).metrics["mrr@10"]
    assert after == pytest.approx(report.chosen.metrics["mrr@10"])
    # 12 questions: the in-sample winner's lead over dense is not significant, so the index keeps dense
    assert report.best.metrics["mrr@10"] >= max(before.values()) and not report.decision.change
    assert after == pytest.approx(before["dense"]) and report.decision.p_value >= 0.05
    manifest = open_manifest(faq_index)
    chosen = report.chosen.candidate
    assert manifest.settings.search.mode == chosen.mode == "dense"
    assert manifest.settings.search.tuned["cross_validated"] == pytest.approx(report.decision.cross_validated, abs=1e-6)
    assert verify_index(faq_index).ok


def test_group_tuning_dry_run_stores_nothing(faq_index, encoder):
    generation = open_manifest(faq_index).generation
    report = tune_index(faq_index, encoder=encoder, store=False)
    assert report.measured.queries == 18 and report.other is None  # the example FAQ's entries that share a group with a differently worded one
    assert not report.stored and open_manifest(faq_index).generation == generation
    assert report.best.metrics["mrr@10"] >= report.current.metrics["mrr@10"] > 0.5


# -- the "no good answer" cut ----------------------------------------------------------------------------


def test_choose_cut_routes_most_questions_right_or_meets_a_precision():
    examples = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.3, False)]
    cut, _ = choose_cut(examples, None)
    assert cut == pytest.approx(0.75)  # keeps 2 right, refuses 2 wrong, loses one right answer (4/5)
    cut, _ = choose_cut(examples, 0.75)
    assert cut == pytest.approx(0.45)  # 3 right of 4 answered
    with pytest.raises(BertdexError, match="no cut reaches"):
        choose_cut([(0.9, False), (0.8, True)], 0.99)


def test_calibrated_cut_routes_an_unseen_out_of_scope_question_to_no_answer(faq_index, encoder):
    english = [q for q in read_questions(EXAMPLES / "out_of_scope.txt") if q.isascii()]
    result = calibrate_index(faq_index, out_of_scope=english[:4], queries=load_queries(EN_QUERIES),
                             qrels=load_qrels(EN_QRELS), encoder=encoder)
    # every out-of-scope example refused, and no right answer refused (the one wrong in-scope top answer scores
    # above a right one: refusing it would refuse 1 of 11 right answers, more than calibrate's 5%)
    assert result.stored and result.refused_wrong >= 4 and result.refused_right == 0 and result.answered_wrong <= 1
    assert open_manifest(faq_index).settings.search.min_score == pytest.approx(result.min_score)
    searcher = Searcher(faq_index, encoder=encoder)
    assert searcher.search(english[4], k=3) == []  # "What is the capital of Australia?", not calibrated on
    answered = searcher.search("I forgot my password", k=3)
    assert answered and answered[0].key == "en-001" and answered[0].score >= result.min_score
    shown = run_cli("query", faq_index, english[4], "--json")
    assert shown.returncode == 1 and json.loads(shown.stdout)["answered"] is False  # grep-like: no good answer
    assert json.loads(shown.stdout)["cut_source"].startswith("calibrated on")


# -- command line and warnings --------------------------------------------------------------------------


def test_eval_command_prints_the_same_metrics_as_the_library(faq_index_master, encoder):
    shown = run_cli("eval", faq_index_master, "--queries", EN_QUERIES, "--qrels", EN_QRELS, "--mode", "dense",
                    "--json", "--per-query", check=True)
    data = json.loads(shown.stdout)
    expected = evaluate(Searcher(faq_index_master, encoder=encoder), load_queries(EN_QUERIES), load_qrels(EN_QRELS),
                        mode="dense")
    assert data["queries"] == 12 and len(data["per_query"]) == 12
    assert data["mrr@10"] == pytest.approx(expected.metrics["mrr@10"], abs=1e-6)
    assert data["per_query"][0]["query_id"] == "q1"


def test_warns_when_the_tokenizer_splits_hangul_into_jamo(ko_index, faq_index_master):
    from indexer.store.coverage import index_warnings

    warnings = index_warnings(ko_index)
    assert any("jamo" in w for w in warnings)
    assert index_warnings(faq_index_master) == []


def test_the_warnings_are_remembered_until_a_write(ko_index, tmp_path, encoder):
    """`info` on an e5 index loaded its 250k-piece tokenizer each time (~0.6 s): the warnings are kept per generation."""
    import shutil

    from indexer.ingest.build import add_documents
    from indexer.store.coverage import index_warnings

    folder, memo = tmp_path / "ko", tmp_path / "memo"
    shutil.copytree(ko_index, folder, ignore=shutil.ignore_patterns("write.lock"))
    first = index_warnings(folder, memo=memo)
    (kept,) = memo.glob("*.json")
    assert any("jamo" in w for w in first) and json.loads(kept.read_text()) == first
    kept.write_text(json.dumps(["remembered"]))  # what the memo says is what comes back, without a tokenizer
    assert index_warnings(folder, memo=memo) == ["remembered"]
    source = tmp_path / "more.csv"
    source.write_text("id,group,question\nko-new,g-refund,환불은 언제 되나요?\n", encoding="utf-8")
    add_documents(folder, source, text_fields=["question"], group_field="group", encoder=encoder)  # a new generation: looked at again
    assert index_warnings(folder, memo=memo) == first and len(list(memo.glob("*.json"))) == 2


def test_full_width_and_decomposed_text_is_normalized_before_matching(faq_index_master, encoder):
    import unicodedata

    assert keyword_terms("ＲＥＳＥＴ　my  PIN") == ["reset", "pin"]  # "my": a stop word (kiwi-2)
    assert keyword_terms(unicodedata.normalize("NFD", "비밀번호")) == keyword_terms("비밀번호")
    searcher = Searcher(faq_index_master, encoder=encoder)
    plain = searcher.search("I forgot my password", k=1, mode="dense")[0]
    wide = searcher.search("Ｉ　ｆｏｒｇｏｔ   ｍｙ ｐａｓｓｗｏｒｄ", k=1, mode="dense")[0]
    assert wide.key == plain.key and wide.score == pytest.approx(plain.score, abs=1e-6)

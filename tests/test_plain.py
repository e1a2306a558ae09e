"""A plain FAQ with no labels and no groups: the cut made from the collection, a keyword side that
never ranks a stop-word match first, calibrate's warnings, and tune that works with nothing but the FAQ."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import EXAMPLES, run_cli
from indexer import build_index
from indexer.ingest.build import KOREAN_FUSION, KOREAN_WEIGHT, add_documents
from indexer.ingest.cut import sample_questions
from indexer.ingest.readers import read_questions
from indexer.store.folder import open_manifest
from indexer.store.keywords import keyword_terms
from search import keyword
from search.quality.calibrate import calibrate_index
from search.quality.evaluate import evaluate, load_qrels, load_queries
from search.quality.tune import tune_index
from search.searcher import Searcher

# the case: a question sharing only "can" and "get" with one entry, and its meaning with another
INVOICING = [
    {"id": "reminders", "question": "Send automatic payment reminders to customers whose invoices are overdue"},
    {"id": "copy", "question": "Can I get a copy of my contract?"},
    {"id": "logo", "question": "Put your company logo on invoices"},
    {"id": "currency", "question": "Bill customers in another currency"},
    {"id": "export", "question": "Export all invoices to a spreadsheet"},
]
NUDGE = "can late payers get automatic nudges"


def write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def invoicing(tmp_path_factory, resolved):
    folder = tmp_path_factory.mktemp("invoicing") / "index"
    build_index(write_csv(folder.parent / "faq.csv", INVOICING), folder, text_fields=["question"], id_field="id",
                resolved=resolved)
    return folder


def test_stop_words_are_no_keyword_terms():
    assert keyword_terms(NUDGE) == ["late", "payers", "automatic", "nudges"]
    assert keyword_terms("Can I get a copy of my contract? How?") == ["copy", "contract", "how"]
    assert "can" in keyword_terms(NUDGE, "kiwi-1")  # an index written before keeps its terms


def test_hybrid_never_ranks_a_can_get_only_match_first(invoicing, encoder):
    searcher = Searcher(invoicing, encoder=encoder)
    assert searcher.manifest.settings.keyword_terms == "kiwi-2"
    for mode in ("hybrid", "dense"):
        hits = searcher.search(NUDGE, 3, mode=mode, min_score=float("-inf"))
        assert hits[0].key == "reminders", mode
    assert "copy" not in [hit.key for hit in searcher.search(NUDGE, 5, mode="keyword")]
    searcher.close()


def test_fusion_puts_first_only_a_hit_near_the_best_cosine():
    dense = [(1, 0.62, 11), (4, 0.45, 14), (5, 0.3, 15), (2, 0.20, 12), (3, -0.04, 13)]
    words = [(3, 9.0, None), (2, 1.0, None)]  # a keyword-only favourite, far below on cosine
    for method in keyword.FUSIONS:
        assert keyword.fuse(dense, words, 0.5, method)[0][0] == 1, method
    assert keyword.first_near_best([(3, 1.0, None), (1, 0.5, 11)], dense) == [(1, 0.5, 11), (3, 1.0, None)]
    assert keyword.first_near_best([(4, 1.0, None), (1, 0.5, 11)], dense)[0][0] == 4  # near enough: kept
    assert keyword.first_near_best([(3, 1.0, None), (1, 0.5, 11)], dense[:2] + dense[-1:])[0][0] == 3  # 3 cosines: no spread


def test_agreement_fusion_raises_the_dense_share_where_the_keyword_favourite_is_far_down_the_vectors():
    dense = [(1, 0.90, 11), (2, 0.88, 12), (3, 0.87, 13), (4, 0.80, 14), (5, 0.70, 15)]
    near = [(2, 9.0, None), (4, 1.0, None)]  # the keyword side's first is the vectors' 2nd: the sides agree
    far = [(4, 9.0, None), (2, 1.0, None)]  # its first is the vectors' 4th: they do not
    assert keyword.agreed_weight(dense, near, 0.6) == 0.6 and keyword.agreed_weight(dense, far, 0.6) == 0.8
    assert keyword.agreed_weight(dense, far, 0.9) == 0.9 and keyword.agreed_weight(dense, [], 0.6) == 0.6
    assert keyword.fuse(dense, near, 0.6, "agreement") == keyword.fuse(dense, near, 0.6, "score")
    assert keyword.fuse(dense, far, 0.6, "agreement") == keyword.fuse(dense, far, 0.8, "score")
    assert keyword.fuse(dense, far, 0.6, "score")[0][0] == 4 and keyword.fuse(dense, far, 0.6, "agreement")[0][0] == 1


@pytest.fixture(scope="module")
def korean_plain(tmp_path_factory):
    """examples/faq_ko.csv as a plain FAQ: questions embedded by the Korean model, no groups, no labels."""
    folder = tmp_path_factory.mktemp("faq_ko") / "index"
    build_index(EXAMPLES / "faq_ko.csv", folder, text_fields=["question"], id_field="id",
                model="multilingual-e5-small")
    return folder


def fused(searcher, question: str, weight: float, method: str) -> list[str]:
    """The keys in the order `method` fusion gives the index's own dense and keyword lists (keys as ids)."""
    sides = [[(hit.key, hit.score, None) for hit in searcher.search(question, 60, mode=mode, min_score=float("-inf"))]
             for mode in ("dense", "keyword")]
    return [key for key, _, _ in keyword.fuse(*sides, weight, method)]


def reciprocal_rank(keys: list[str], relevant) -> float:
    return next((1.0 / rank for rank, key in enumerate(keys[:10], 1) if key in relevant), 0.0)


def test_a_korean_faq_starts_with_agreement_fusion_and_no_single_mode_beats_it(korean_plain):
    """Issue 22's target on the Korean example FAQ, with no labels: the starting mode within 0.005 of the best
    single mode. Score fusion at the same 0.6 ranks first, for the shoe-size question, the card-change entry
    that shares only 바꾸다 ("change") with it; the vectors rank it nowhere near the top, so agreement fusion
    answers at 0.8 there and puts the shoe-size entry first."""
    search = open_manifest(korean_plain).settings.search
    assert (search.mode, search.fusion, search.weight) == ("hybrid", KOREAN_FUSION, KOREAN_WEIGHT) == \
        ("hybrid", "agreement", 0.6)
    searcher = Searcher(korean_plain)
    shoes = "신발을 한 치수 큰 걸로 바꾸고 싶어요"
    assert fused(searcher, shoes, 0.6, "score")[0] == "ko-013"
    assert searcher.search(shoes, 1, min_score=float("-inf"))[0].key == fused(searcher, shoes, 0.6, "agreement")[0] \
        == "ko-034"
    queries, qrels = load_queries(EXAMPLES / "eval_ko" / "queries.jsonl"), load_qrels(EXAMPLES / "eval_ko" / "qrels.tsv")
    mrr = {mode: evaluate(searcher, queries, qrels, mode=mode).metrics["mrr@10"] for mode in ("dense", "keyword")}
    mrr["hybrid 0.5"] = sum(reciprocal_rank(fused(searcher, queries[q], 0.5, "score"), qrels[q]) for q in qrels) / len(qrels)
    started = evaluate(searcher, queries, qrels).metrics["mrr@10"]
    searcher.close()
    assert started >= max(mrr.values()) - 0.005 and started > 0.7, (started, mrr)


def test_a_new_index_has_a_cut_from_the_collection(faq_index, encoder):
    search = open_manifest(faq_index).settings.search
    assert search.cut["source"] == "collection" and search.cut["sample"] == len(sample_questions("en")) >= 95
    assert search.cut_source() == "from the collection" and 0.1 < search.min_score < 0.5
    searcher = Searcher(faq_index, encoder=encoder)
    top = [hits[0].score for hits in searcher.search_many(sample_questions("en"), 1, min_score=float("-inf"))]
    assert sum(score < search.min_score for score in top) == pytest.approx(0.9 * len(top), abs=1)
    searcher.close()


def test_the_collection_cut_refuses_off_topic_and_keeps_right_answers_on_the_example_faq(faq_index, encoder):
    """The target of issue 22 with no labels: >= 80% of examples/ off-topic questions refused, >= 95% of the
    in-scope questions that get their right answer keep it."""
    off_topic = [q for name in ("out_of_scope.txt", "out_of_scope_more.txt")
                 for q in read_questions(EXAMPLES / name) if q.isascii()]
    queries, qrels = load_queries(EXAMPLES / "eval_en" / "queries.jsonl"), load_qrels(EXAMPLES / "eval_en" / "qrels.tsv")
    searcher = Searcher(faq_index, encoder=encoder)
    refused = [not hits for hits in searcher.search_many(off_topic, 1)]
    ids = sorted(qrels)
    open_hits = searcher.search_many([queries[q] for q in ids], 1, min_score=float("-inf"))
    cut = searcher.manifest.settings.search.min_score
    right = [hits[0].score for q, hits in zip(ids, open_hits) if hits[0].key in qrels[q] or
             any(key in qrels[q] for key in hits[0].variants)]
    searcher.close()
    assert sum(refused) / len(refused) >= 0.8
    assert len(right) >= 10 and sum(score >= cut for score in right) / len(right) >= 0.95


def test_each_write_makes_the_cut_again_but_keeps_a_calibrated_one(faq_index, encoder, tmp_path):
    before = open_manifest(faq_index).settings.search.min_score
    extra = write_csv(tmp_path / "more.csv", [{"id": "w-1", "group": "", "question": "Will it rain this afternoon?",
                                              "answer": "Sunny.", "category": "weather"}])
    add_documents(faq_index, extra, encoder=encoder)
    after = open_manifest(faq_index).settings.search
    assert after.cut["source"] == "collection" and after.min_score > before  # a sample question now finds its twin
    calibrate_index(faq_index, out_of_scope=["Who won the football match last night?"],
                    in_scope=read_questions(EXAMPLES / "questions_en.txt"), encoder=encoder)
    calibrated = open_manifest(faq_index).settings.search
    assert calibrated.cut_source().startswith("calibrated on ")
    add_documents(faq_index, write_csv(tmp_path / "again.csv", [{**{"id": "w-2", "group": "", "answer": "x",
                                                                     "category": "weather"},
                                                                  "question": "Is it going to snow?"}]), encoder=encoder)
    assert open_manifest(faq_index).settings.search.min_score == calibrated.min_score


def test_calibrate_with_only_out_of_scope_examples_warns(faq_index, encoder):
    result = calibrate_index(faq_index, out_of_scope=read_questions(EXAMPLES / "out_of_scope.txt")[:5],
                             encoder=encoder, store=False)
    assert result.in_scope == 0 and any("no in-scope examples" in w for w in result.warnings)


def test_calibrate_never_refuses_more_than_a_twentieth_of_the_right_answers(faq_index, encoder):
    queries, qrels = load_queries(EXAMPLES / "eval_en" / "queries.jsonl"), load_qrels(EXAMPLES / "eval_en" / "qrels.tsv")
    result = calibrate_index(faq_index, out_of_scope=read_questions(EXAMPLES / "out_of_scope.txt")[:5],
                             queries=queries, qrels=qrels, encoder=encoder, store=False)
    assert result.refused_right <= 0.05 * (result.answered_right + result.refused_right)
    assert not result.warnings


@pytest.mark.slow
def test_repeated_out_of_scope_files_add_up(faq_index, tmp_path):
    lines = read_questions(EXAMPLES / "out_of_scope.txt")[:5]
    (tmp_path / "a.txt").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(lines[3:]) + "\n", encoding="utf-8")
    done = run_cli("calibrate", faq_index, "--out-of-scope", tmp_path / "a.txt", "--out-of-scope", tmp_path / "b.txt",
                   "--dry-run", "--json", check=True)
    assert json.loads(done.stdout)["out_of_scope"] == 5
    assert "warning: no in-scope examples" in done.stderr


def test_tune_on_a_groupless_unlabelled_faq_exits_0_and_says_what_it_needs(tmp_path, resolved):
    folder = tmp_path / "index"
    build_index(write_csv(tmp_path / "faq.csv", INVOICING), folder, text_fields=["question"], id_field="id",
                resolved=resolved)
    generation = open_manifest(folder).generation
    done = run_cli("tune", folder)
    assert done.returncode == 0, done.stderr
    assert "nothing to measure on" in done.stdout and "--queries/--qrels" in done.stdout and "Kept dense" in done.stdout
    assert open_manifest(folder).generation == generation


@pytest.mark.slow
def test_tune_finds_entries_by_their_own_answers(faq_index, encoder, tmp_path, resolved):
    folder = tmp_path / "plain"
    build_index(EXAMPLES / "faq_en.csv", folder, text_fields=["question"], id_field="id", resolved=resolved)
    report = tune_index(folder, encoder=encoder, store=False, layers=[6], other_models=False)
    assert report.measured.source.startswith("entries found by their own answers (field answer")
    assert report.measured.queries == 40  # the distinct answers of the 50 entries
    assert report.current.metrics["mrr@10"] > 0.6


@pytest.mark.slow
def test_http_answers_and_info_say_where_the_cut_came_from(faq_index, encoder):
    from search.server.app import create_app
    from test_server import KEY, WRITER, running

    with running(create_app(faq_index, api_key=KEY, encoder=encoder)) as http:
        info = http.get("/info").json()
        assert info["cut"]["source"] == "from the collection" and info["tuned"] is False
        found = http.post("/search", json={"question": "Who won the football match last night?"}).json()["results"][0]
        assert found["answered"] is False and found["cut_source"] == "from the collection"
        assert found["cut"] == pytest.approx(info["cut"]["min_score"]) and found["closest"]["band"] == "below"
        given = http.post("/search", json={"question": "I forgot my password", "min_score": 0.1}).json()["results"][0]
        assert given["cut_source"] == "given" and given["hits"][0]["band"] == "good"
        added = http.post("/documents", headers=WRITER, json={"documents": [
            {"key": "w-1", "text": "Who won the football match last night?"}]})
        assert added.status_code == 200, added.text
        after = http.get("/info").json()["cut"]
        assert after["source"] == "from the collection" and after["min_score"] > info["cut"]["min_score"]

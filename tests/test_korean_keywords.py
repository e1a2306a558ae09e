"""Korean keyword terms (bigrams + Kiwi morphemes), and indexes written with the older bigram-only terms."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES, ROOT, run_cli
from indexer import BertdexError, build_index
from indexer.ingest.build import add_documents
from indexer.store.folder import connect, open_manifest
from indexer.store.keywords import fts_document, fts_query, keyword_terms, korean_morphemes
from indexer.store.verify import verify_index
from search import Searcher, keyword

FORGOT = {"ko-001", "ko-005", "ko-006"}  # group g-password-reset: "비밀번호를 잊어버렸어요", ...


def test_particles_are_stripped_so_inflected_forms_share_terms():
    object_case, subject_case = keyword_terms("비밀번호를"), keyword_terms("비밀번호가")
    assert {"비밀", "번호"} <= set(object_case) & set(subject_case)
    assert korean_morphemes("비밀번호를") == korean_morphemes("비밀번호가") == ["비밀", "번호"]
    assert not {"를", "가"} & set(object_case + subject_case)
    # a verb's stem, whatever its ending: the past tense and the request both give 바꾸
    assert "바꾸" in keyword_terms("카드를 바꿨어요") and "바꾸" in keyword_terms("카드를 바꾸고 싶어요")
    assert "잊어버리" in keyword_terms("비밀번호를 잊어버렸어요")


def test_korean_terms_do_not_depend_on_spacing():
    assert keyword_terms("비밀번호 변경") == keyword_terms("비밀번호변경")
    assert keyword_terms("환불은 언제 되나요") == keyword_terms("환불은언제되나요")
    assert keyword_terms("비밀번호 변경", "bigram") == ["비밀", "밀번", "번호", "호변", "변경"]


def test_mixed_korean_and_english_keeps_the_english_terms_of_before():
    text = "iPhone에서 Reset PIN 비밀번호 변경"
    terms = keyword_terms(text)
    assert terms[: len(keyword_terms(text, "bigram"))] == keyword_terms(text, "bigram")  # the bigram terms come first
    assert [t for t in terms if t.isascii()] == ["iphone", "reset", "pin"]
    assert terms[len(keyword_terms(text, "bigram")):] == ["비밀번호", "변경"]  # then the morphemes
    assert keyword_terms("Reset my PIN", "kiwi-1") == keyword_terms("Reset my PIN", "bigram") == ["reset", "my", "pin"]
    assert keyword_terms("Reset my PIN") == ["reset", "pin"]  # kiwi-2 leaves English stop words out


def test_emoji_and_empty_text_give_no_terms_of_their_own():
    assert keyword_terms("😀🙏") == [] and keyword_terms("") == [] and keyword_terms(" \t ") == []
    assert keyword_terms("비밀번호 변경 😀") == keyword_terms("비밀번호 변경")
    assert fts_query("") is None and fts_query("😀") is None
    assert fts_query("번호를") == '"번호" OR "호를"'


KOREANISH = st.text(st.sampled_from(list("비밀번호가를 잊어버렸요ㅋㅠ 배송 abc 12 😀 東京 \u200b\t.,!?\"'*()-")), max_size=40)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.one_of(KOREANISH, st.text(max_size=60)))
@example("비밀번호가 기억이 안 나요 😀")
@example('iPhone에서 "Reset" PIN*')
def test_a_text_asked_as_a_question_finds_itself(text):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE keywords USING fts5(terms, tokenize='porter unicode61')")
    db.execute("INSERT INTO keywords(rowid, terms) VALUES (1, ?)", [fts_document(text)])
    query = fts_query(text)
    if any(character.isalnum() for term in keyword_terms(text) for character in term):
        assert db.execute("SELECT rowid FROM keywords WHERE keywords MATCH ?", [query]).fetchall() == [(1,)]
    db.close()


def test_unknown_term_scheme_is_one_readable_error():
    with pytest.raises(BertdexError, match="'kiwi-9'.*rebuild the index with --replace"):
        keyword_terms("비밀번호", "kiwi-9")


def test_threads_share_the_analyzer_and_get_the_same_terms():
    with (EXAMPLES / "faq_ko.csv").open(encoding="utf-8", newline="") as handle:
        texts = [row["question"] + " " + row["answer"] for row in csv.DictReader(handle)]
    alone = [keyword_terms(text) for text in texts]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(keyword_terms, texts * 3)) == alone * 3


def test_english_text_never_loads_the_korean_analyzer():
    code = ("import indexer.store.keywords as k, sys; k.keyword_terms('Reset my PIN'); k.fts_query('東京'); "
            "print(k._kiwi is None, 'kiwipiepy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.split() == ["True", "False"], result.stderr


# -- indexes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ko_built(tmp_path_factory, resolved):
    """examples/faq_ko.csv indexed as `make run` does it (question embedded, group field)."""
    folder = tmp_path_factory.mktemp("ko-kiwi") / "index"
    build_index(EXAMPLES / "faq_ko.csv", folder, text_fields=["question"], group_field="group", resolved=resolved)
    return folder


def as_old_index(source, folder):
    """A copy of `source` as an index written before kiwi-1 holds it: bigram rows, no scheme in the settings."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("write.lock"))
    db = sqlite3.connect(folder / "bertdex.db")
    with db:
        for doc, text in db.execute("SELECT id, text FROM documents").fetchall():
            db.execute("UPDATE keywords SET terms = ? WHERE rowid = ?", [fts_document(text, "bigram"), doc])
        settings = json.loads(db.execute("SELECT value FROM manifest WHERE name = 'settings'").fetchone()[0])
        del settings["keyword_terms"]
        db.execute("UPDATE manifest SET value = ? WHERE name = 'settings'", [json.dumps(settings)])
    db.close()
    return folder


def stored_terms(folder, key):
    db = connect(folder, readonly=True)
    try:
        return db.execute("SELECT terms FROM keywords WHERE rowid = (SELECT id FROM documents WHERE key = ?)",
                          [key]).fetchone()[0]
    finally:
        db.close()


def test_new_index_stores_bigrams_and_morphemes_and_says_so(ko_built):
    assert open_manifest(ko_built).settings.keyword_terms == "kiwi-2"
    assert stored_terms(ko_built, "ko-001") == fts_document("비밀번호를 잊어버렸어요", "kiwi-2") \
        == fts_document("비밀번호를 잊어버렸어요", "kiwi-1")  # the same Korean terms
    assert "잊어버리" in stored_terms(ko_built, "ko-001").split()


def test_forgotten_password_question_finds_the_reset_entry_by_keywords(ko_built, encoder):
    searcher = Searcher(ko_built, encoder=encoder)
    try:
        keys = [hit.key for hit in searcher.search("비밀번호가 기억이 안 나요", k=3, mode="keyword")]
        assert FORGOT & set(keys), keys
        assert searcher.search("비밀번호가 생각이 안 나요", k=1, mode="keyword")[0].key in FORGOT
    finally:
        searcher.close()


@pytest.mark.slow
def test_forgotten_password_question_from_the_command_line(ko_built):
    result = run_cli("query", ko_built, "비밀번호가 기억이 안 나요", "-k", "3", "--mode", "keyword", "--json",
                     check=True)
    hits = json.loads(result.stdout)["hits"]
    assert FORGOT & {hit["key"] for hit in hits}, hits


def test_old_bigram_index_is_still_queried_and_updated_with_bigrams(ko_built, encoder, tmp_path):
    old = as_old_index(ko_built, tmp_path / "old")
    db = connect(old, readonly=True)
    keys = dict(db.execute("SELECT id, key FROM documents").fetchall())
    question = "카드를 바꿨어요"  # kiwi-1 would also ask for the stem 바꾸, a bigram of "카드로 바꾸고 싶어요"
    as_bigrams = keyword.search(db, question, 10, "bigram")
    assert keyword.search(db, question, 10, "kiwi-1") != as_bigrams
    assert keyword.search(db, question, 10) == as_bigrams  # the scheme comes from the index when not given
    db.close()
    searcher = Searcher(old, encoder=encoder)
    try:
        hits = searcher.search(question, k=5, mode="keyword")  # one hit per group, so a subsequence
        bm25 = {keys[doc]: score for doc, score, _ in as_bigrams}
        assert hits[0].key == keys[as_bigrams[0][0]]
        assert [hit.score for hit in hits] == pytest.approx([bm25[hit.key] for hit in hits])
        assert searcher.search("비밀번호변경", k=1, mode="keyword")[0].key == "ko-003"
        assert searcher.search("비밀번호가 생각이 안 나요", k=1, mode="keyword")[0].key in FORGOT
    finally:
        searcher.close()
    added = tmp_path / "more.csv"
    added.write_text("id,group,question,answer,category\nko-900,g-new,배송지를 바꿨어요,네.,shipping\n", encoding="utf-8")
    add_documents(old, added, encoder=encoder)
    assert stored_terms(old, "ko-900") == fts_document("배송지를 바꿨어요", "bigram")
    assert open_manifest(old).settings.keyword_terms is None and verify_index(old).ok


def test_index_from_a_newer_scheme_says_what_to_do(ko_built, encoder, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(ko_built, newer, ignore=shutil.ignore_patterns("write.lock"))
    db = sqlite3.connect(newer / "bertdex.db")
    with db:
        settings = json.loads(db.execute("SELECT value FROM manifest WHERE name = 'settings'").fetchone()[0])
        db.execute("UPDATE manifest SET value = ? WHERE name = 'settings'",
                   [json.dumps({**settings, "keyword_terms": "kiwi-9"})])
    db.close()
    searcher = Searcher(newer, encoder=encoder)
    try:
        with pytest.raises(BertdexError, match="'kiwi-9'"):
            searcher.search("비밀번호", k=1, mode="keyword")
    finally:
        searcher.close()


def test_a_korean_faq_starts_hybrid_and_its_scores_are_cosines_a_cut_can_use(tmp_path):
    """Hybrid ranks by score fusion (min-max: every top hit would score ~1) but shows each hit's cosine,
    so an off-topic question still looks off-topic and `calibrate` has something to cut on."""
    from search import Searcher
    from search.keyword import scored_by_cosine
    from search.searcher import open_manifest

    assert scored_by_cosine([(2, 0.5, 8), (1, 0.5, 7), (3, 0.2, None)], [(1, .9, 7), (2, .5, 8)]) == \
        [(2, 0.5, 8), (1, 0.9, 7), (3, 0.5, None)]
    folder = tmp_path / "ko"
    build_index(EXAMPLES / "faq_ko.csv", folder, text_fields=["question"], group_field="group",
                model="multilingual-e5-small")
    search = open_manifest(folder).settings.search
    assert (search.mode, search.fusion, search.weight) == ("hybrid", "agreement", 0.6) and "Korean" in search.reason
    searcher = Searcher(folder)
    hybrid = searcher.search("비밀번호가 생각이 안 나요", k=3)
    dense = {hit.key: hit.score for hit in searcher.search("비밀번호가 생각이 안 나요", k=10, mode="dense")}
    assert hybrid[0].key == "ko-001" and hybrid[0].score == pytest.approx(dense["ko-001"], abs=1e-6)
    assert hybrid[0].score < 0.999  # not the min-max 1.0
    assert all(hit.score == pytest.approx(dense[hit.key], abs=1e-6) for hit in hybrid if hit.key in dense)
    assert searcher.search("오늘 저녁 메뉴로 김치찌개 어때요?", k=1) == []  # below the collection's cut
    off_topic = searcher.search("오늘 저녁 메뉴로 김치찌개 어때요?", k=1, min_score=float("-inf"))[0].score
    assert off_topic < search.min_score <= hybrid[0].score and search.cut["language"] == "ko"
    searcher.close()


def test_a_warmed_up_searcher_has_kiwi_loaded_only_where_korean_keywords_will_run(ko_built, faq_index_master):
    """`serve` warms up before it says it is ready: a Korean hybrid index's first answer must not load Kiwi (~1 s)."""
    code = ("import sys, indexer.store.keywords as k; from search import Searcher; s = Searcher(sys.argv[1]); "
            "s.warm_up(); print(s.manifest.settings.search.mode, k._kiwi is not None)")
    answers = []
    for folder in (ko_built, faq_index_master):
        result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=ROOT,
                                timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        answers.append(result.stdout.split())
    assert answers == [["hybrid", "True"], ["dense", "False"]], result.stderr

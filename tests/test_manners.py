"""The help desk's manners in the library (issue 14): sniffed input, Q+A fields, filters that say why,
per-batch progress, recorded text fields, near-duplicates, the calibration plot. Real model, real files."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from conftest import EXAMPLES
from indexer.errors import BertdexError
from indexer.ingest.readers import Entry, Fields, read_entries, sniff_delimiter
from indexer.ingest.stdin import sniff_format, spooled
from search.filters import check_weight, filter_problem, parse_where, passes

QA = 'id,question,answer,category\n1,How do I export invoices?,"Open Reports.\n\nChoose Export.\n\n1. CSV\n2. PDF",billing\n'


# -- input -----------------------------------------------------------------------------------------


def test_a_semicolon_csv_is_read_by_its_sniffed_delimiter(tmp_path):
    data = tmp_path / "faq.csv"
    data.write_text('id;question;answer\n1;Where is my parcel, please?;"Tracking page; top right"\n'
                    "2;How do I pay?;By card\n", encoding="utf-8")
    entries = list(read_entries(data, Fields(("question",))))
    assert [(e.key, e.text, e.fields) for e in entries] == [
        ("1", "Where is my parcel, please?", {"answer": "Tracking page; top right"}),
        ("2", "How do I pay?", {"answer": "By card"})]


@pytest.mark.parametrize(("sample", "expected"), [
    ("id;question\n1;where is it, then?\n", ";"),
    ("id,question,answer\n1,a; b; c; d,e\n", ","),
    ("id|question\n1|x\n", "|"),
    ("question\nno delimiter at all\n", ","),
])
def test_sniff_delimiter_trusts_the_header(sample, expected):
    assert sniff_delimiter(sample) == expected


def test_a_given_delimiter_wins_and_a_bad_one_is_one_line(tmp_path):
    data = tmp_path / "faq.txt"
    data.write_text("id|question\n1|Where is my parcel?\n", encoding="utf-8")
    assert [e.text for e in read_entries(data, Fields(("question",)), delimiter="|")] == ["Where is my parcel?"]
    with pytest.raises(BertdexError, match="--delimiter ';;': give one character"):
        list(read_entries(data, delimiter=";;"))


@pytest.mark.parametrize(("sample", "expected"), [
    ('{"id": 1, "text": "hi"}\n', "jsonl"), ("id\tquestion\n1\thi\n", "tsv"), ("id;question\n1;hi\n", "csv"),
    ("id,question,answer\n", "csv"), ("Where is my parcel, please?\nHow do I pay?\n", "text"), ("", "text"),
])
def test_stdin_format_is_sniffed(sample, expected):
    assert sniff_format(sample) == expected


def test_a_spooled_stream_is_read_twice_and_errors_name_stdin():
    stream = io.BytesIO(b"id;question\n1;Where is my parcel?\n2;\n")
    with pytest.raises(BertdexError) as raised, spooled(stream) as copy:
        assert copy.fmt == "csv"
        assert len(list(read_entries(copy.path, Fields(("question",))))) == 2  # one entry, one problem
        raise BertdexError(f"{copy.path}:3: empty text")
    assert str(raised.value) == "<stdin>:3: empty text"


def test_question_and_answer_are_embedded_together_and_the_answer_keeps_its_lines(tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text(QA, encoding="utf-8")
    (entry,) = read_entries(data, Fields(("question", "answer")))
    assert entry.text == "How do I export invoices? Open Reports. Choose Export. 1. CSV 2. PDF"
    assert entry.fields["answer"] == "Open Reports.\n\nChoose Export.\n\n1. CSV\n2. PDF"
    assert entry.fields["answer"].count("\n") == 5 and entry.fields["question"] == "How do I export invoices?"
    (single,) = read_entries(data, Fields(("question",)))
    assert "question" not in single.fields and single.fields["answer"].count("\n") == 5


# -- building --------------------------------------------------------------------------------------


def test_info_records_the_text_field_chosen_automatically(tmp_path, resolved):
    from indexer import build_index
    from indexer.store.info import index_info

    data = tmp_path / "faq.csv"
    data.write_text("id,question\n1,Where is my parcel?\n", encoding="utf-8")
    build_index(data, tmp_path / "index", resolved=resolved)
    assert index_info(tmp_path / "index")["settings"]["text_fields"] == ["question"]


def test_progress_moves_per_batch_and_says_when_the_model_loads(tmp_path, resolved, monkeypatch):
    from indexer import build_index
    from indexer.ingest import build

    assert build.CHUNK <= 128  # the bar moves at least every 128 entries (it moved every 2,048 before)
    data = tmp_path / "many.txt"
    data.write_text("".join(f"question number {i} about parcels\n" for i in range(10)), encoding="utf-8")
    calls = []
    build_index(data, tmp_path / "index", resolved=resolved, chunk_size=4,  # small chunks: 10 entries, 3 of them
                progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 10), (4, 10), (8, 10), (10, 10)]


# -- searching -------------------------------------------------------------------------------------


def test_where_parses_and_one_field_twice_is_an_or():
    assert parse_where(["category=billing", "category=account", "lang=en=us"]) == {
        "category": ("billing", "account"), "lang": ("en=us",)}
    assert passes({"category": "account"}, {"category": ("billing", "account")})
    assert not passes({"category": "shipping"}, {"category": ("billing", "account")})
    assert passes({"n": 3}, {"n": "3"})
    with pytest.raises(BertdexError, match="--where 'category': use NAME=VALUE"):
        parse_where(["category"])


@pytest.mark.parametrize("weight", [3, -1, 1.5, math.nan, math.inf])
def test_weight_outside_zero_to_one_is_refused(weight):
    with pytest.raises(BertdexError, match="must be between 0 and 1"):
        check_weight(weight)


def test_weight_is_checked_by_the_searcher_too(faq_index_master, encoder):
    from search import Searcher

    searcher = Searcher(faq_index_master, encoder=encoder)
    with pytest.raises(BertdexError, match="--weight 3: the hybrid weight must be between 0 and 1"):
        searcher.search("refund", mode="hybrid", weight=3)
    assert searcher.search("refund", mode="hybrid", weight=1.0)[0].score <= 1.0


def test_an_empty_filtered_search_says_why(faq_index_master, encoder):
    from search import Searcher

    searcher = Searcher(faq_index_master, encoder=encoder)
    assert searcher.search("refund", filters=parse_where(["category=Billing"])) == []
    assert filter_problem(searcher.db, parse_where(["category=Billing"])) == (
        "no entry with category=Billing (values: account, app, billing, orders, privacy, refunds, returns, security, "
        "shipping, subscription, support)")
    assert filter_problem(searcher.db, {"categry": "billing"}) == (
        "no entry has a field 'categry' (fields: answer, category, group)")
    assert filter_problem(searcher.db, {"category": "billing"}) is None
    both = searcher.search("refund", k=10, filters=parse_where(["category=billing", "category=shipping"]),
                           min_score=float("-inf"))  # below the collection's cut too: this is about the filter
    assert {hit.fields["category"] for hit in both} == {"billing", "shipping"}


# -- quality ---------------------------------------------------------------------------------------


def test_duplicates_default_threshold_finds_the_phrasings_of_one_question(tmp_path, resolved):
    from indexer import build_index
    from search.quality.duplicates import DEFAULT_THRESHOLD, find_duplicates

    build_index(EXAMPLES / "faq_en.csv", tmp_path / "index", text_fields=["question"], resolved=resolved)
    found = find_duplicates(tmp_path / "index")
    assert found.threshold == DEFAULT_THRESHOLD and "default" in found.rule
    assert [(p.key_a, p.key_b) for p in found.pairs] == [("en-001", "en-006"), ("en-001", "en-005"), ("en-024", "en-028")]
    assert all(p.cosine >= DEFAULT_THRESHOLD for p in found.pairs)


def test_duplicates_threshold_is_measured_on_the_groups_and_skips_one_groups_variants(faq_index_master):
    from search.quality.duplicates import close_pairs, find_duplicates

    found = find_duplicates(faq_index_master)
    assert "90th percentile" in found.rule and 0.7 < found.threshold < 0.8 and found.pairs == ()
    low = find_duplicates(faq_index_master, threshold=0.6, limit=2)
    assert len(low.pairs) == 2 and low.more > 0 and all(p.group_a != p.group_b for p in low.pairs)
    assert low.pairs[0].cosine >= low.pairs[1].cosine >= 0.6
    # against brute force on three unit vectors: rows 0 and 1 share a group, so only (0, 2) is listed
    vectors = np.eye(3, dtype=np.float32)
    vectors[2] = vectors[0] * 0.8 + vectors[1] * 0.6
    assert close_pairs(vectors, ["a", "a", None], 0.7) == [(pytest.approx(0.8), 0, 2)]


def test_calibrate_plot_draws_a_png(faq_index_master, encoder, tmp_path):
    pytest.importorskip("matplotlib")
    from search.quality.calibrate import calibrate_index, read_questions
    from search.quality.calibrate_plot import plot_calibration

    result = calibrate_index(faq_index_master, out_of_scope=read_questions(EXAMPLES / "out_of_scope.txt"),
                             in_scope=["how do I reset my password?", "where is my order?"], store=False,
                             encoder=encoder)
    assert len(result.examples) == result.out_of_scope + result.in_scope
    path = plot_calibration(result, tmp_path / "cut.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(BertdexError, match="give a .png file name"):
        plot_calibration(result, tmp_path / "cut.pdf")

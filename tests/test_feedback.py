"""Agents' feedback and the query log: storage in the index's SQLite file, the HTTP API, the report, tuning on it.

Real indexes in tmp_path, the real model, a real uvicorn on loopback.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from test_server import KEY, WRITER, error, running

GIFT_CARDS = ["Do you sell gift cards?", "can I buy a gift card for my sister", "Are gift vouchers available?"]
CRYPTO = ["Can I pay with bitcoin?", "do you accept cryptocurrency payments"]


def feed(folder, unanswered=(), wrong=(), right=()):
    """Log unanswered questions and store verdicts directly through the store."""
    from indexer.store.feedback import FeedbackStore

    store = FeedbackStore(folder)
    try:
        for question in unanswered:
            store.log_query(question, "dense", [("en-025", 0.2)], answered=False)
        for question, key in wrong:
            store.add(question, key, "down", rank=1)
        for question, key in right:
            store.add(question, key, "right", rank=2)
    finally:
        store.close()


# -- storage ----------------------------------------------------------------------------------------


def test_feedback_lands_in_one_table_and_leaves_the_vectors_alone(faq_index):
    from indexer.errors import BertdexError
    from indexer.store.feedback import FeedbackStore
    from search.searcher import open_manifest

    before = open_manifest(faq_index)
    vectors = {p.name: p.read_bytes() for p in faq_index.glob("vectors.*")}
    store = FeedbackStore(faq_index)
    try:
        first = store.add("how do I reset my password", "en-001", "up", rank=1, score=0.88)
        store.add("how do I reset my password", "en-006", "right", rank=3)
        with pytest.raises(BertdexError, match="key: no entry with key 'nope'"):
            store.add("q", "nope", "up")
        with pytest.raises(BertdexError, match="verdict: 'meh' is not one of up, down, right"):
            store.add("q", "en-001", "meh")
        verdicts = store.verdicts()
    finally:
        store.close()
    assert [(v.id, v.key, v.verdict, v.rank) for v in verdicts] == [(first, "en-001", "up", 1), (first + 1, "en-006", "right", 3)]
    after = open_manifest(faq_index)
    assert after.generation == before.generation and after.updated == before.updated
    assert {p.name: p.read_bytes() for p in faq_index.glob("vectors.*")} == vectors


def test_the_query_log_keeps_only_the_newest_rows(faq_index):
    from indexer.store.feedback import FeedbackStore

    store = FeedbackStore(faq_index, max_logged=5)
    try:
        ids = [store.log_query(f"question {i}", "dense", [("en-001", 0.5 + i / 100)], answered=i % 2 == 0) for i in range(12)]
        logged = store.logged()
    finally:
        store.close()
    assert [q.id for q in logged] == ids[-5:] and [q.question for q in logged] == [f"question {i}" for i in range(7, 12)]
    assert logged[-1].hits == (("en-001", 0.61),) and logged[-1].answered is False


def test_an_index_from_before_the_feedback_tables_gets_them(faq_index):
    from indexer.store.feedback import FeedbackStore
    from indexer.store.folder import IndexWriter, connect

    db = connect(faq_index)
    db.execute("DROP TABLE feedback")
    db.execute("DROP TABLE query_log")
    db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_feedback_and_query_log'")
    db.close()
    reader = FeedbackStore(faq_index, readonly=True)
    assert reader.verdicts() == [] and reader.logged() == []  # read-only: nothing created, nothing fails
    reader.close()
    with IndexWriter.open(faq_index) as writer:
        writer.commit()
    db = connect(faq_index, readonly=True)
    assert {"feedback", "query_log"} <= set(db.table_names())
    db.close()


# -- analysis ---------------------------------------------------------------------------------------


def test_group_by_meaning_leads_with_the_most_asked():
    from search.quality.feedback import group_by_meaning

    assert group_by_meaning(np.eye(3, dtype=np.float32)[[0, 0, 1]], [1, 2, 1], 0.9) == [[1, 0], [2]]
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    assert group_by_meaning(vectors, [1, 1, 1], 0.7) == [[0, 1], [2]]
    assert group_by_meaning(vectors, [1, 1, 1], 0.5) == [[0, 1], [2]]  # 2 joins no leader it is not close to
    assert group_by_meaning(vectors, [1, 1, 3], 0.5) == [[2, 1], [0]]


def test_feedback_report_groups_missed_questions_by_meaning(faq_index, encoder):
    from search.quality.feedback import feedback_report

    feed(faq_index, unanswered=GIFT_CARDS + ["Do you sell gift cards?"] + CRYPTO + ["What is the capital of Australia?"],
         wrong=[("Are gift vouchers available?", "en-001")],
         right=[("What is the capital of Australia?", "en-025")])  # marked right: a ranking issue, not a gap
    report = feedback_report(faq_index, encoder=encoder)
    assert (report.logged, report.unanswered, report.verdicts, report.marked_wrong, report.marked_right) == (7, 7, 2, 1, 1)
    groups = [sorted(q.question for q in g.questions) for g in report.groups]
    assert groups == [sorted(GIFT_CARDS), sorted(CRYPTO)]
    gifts = report.groups[0]
    assert gifts.count == 5 and gifts.questions[0].question == "Do you sell gift cards?" and gifts.questions[0].unanswered == 2
    assert gifts.closest_key is not None and -1 <= gifts.closest_score < 0.7
    assert report.to_dict()["groups"][1]["count"] == 2


def test_labelled_queries_come_from_answers_marked_right(faq_index):
    from indexer.errors import BertdexError
    from indexer.store.feedback import FeedbackStore
    from search.quality.feedback import labelled_from_feedback

    with pytest.raises(BertdexError, match="no answer is marked right"):
        labelled_from_feedback(faq_index)
    store = FeedbackStore(faq_index)
    store.add("I lost my password", "en-001", "down")
    store.add("I lost my password", "en-006", "right")
    store.add("i lost my  password", "en-001", "down")  # the same question, written differently
    store.add("where is my parcel", "en-029", "up")
    store.add("where is my parcel", "en-029", "down")  # one up, one down: not relevant
    store.add("refund please", "en-010", "down")
    store.close()
    queries, qrels = labelled_from_feedback(faq_index)
    assert list(queries.values()) == ["I lost my password"]
    assert list(qrels.values()) == [{"en-006": 1.0}]


# -- over HTTP --------------------------------------------------------------------------------------


def test_feedback_over_http_needs_the_write_key_when_there_is_one(faq_index, encoder):
    from indexer.store.feedback import FeedbackStore
    from search.server.app import create_app

    verdict = {"question": "Do you sell gift cards?", "key": "en-025", "verdict": "down", "rank": 1}
    with running(create_app(faq_index, api_key=KEY, encoder=encoder)) as http:
        asked = http.post("/search", json={"question": "Do you sell gift cards?", "k": 2}).json()["results"][0]
        assert error(http.post("/feedback", json=verdict), 401).startswith("a valid API key is required")
        stored = http.post("/feedback", json={**verdict, "query_id": asked["query_id"]}, headers=WRITER)
        assert stored.status_code == 200 and stored.json()["verdict"] == "down"
        assert error(http.post("/feedback", json={**verdict, "key": "nope"}, headers=WRITER), 422) == "key: no entry with key 'nope'"
        assert "verdict" in error(http.post("/feedback", json={**verdict, "verdict": "meh"}, headers=WRITER), 422)
        assert http.get("/info").json()["server"]["feedback"] == "key"
    store = FeedbackStore(faq_index, readonly=True)
    (logged,), (given,) = store.logged(), store.verdicts()
    store.close()
    assert logged.question == "Do you sell gift cards?" and len(logged.hits) == 2 and given.query_id == logged.id


def test_feedback_is_open_on_a_keyless_loopback_server_and_off_when_read_only(faq_index, encoder):
    from indexer.store.feedback import FeedbackStore
    from search.server.app import create_app

    verdict = {"question": "Do you sell gift cards?", "key": "en-025", "verdict": "up"}
    with running(create_app(faq_index, encoder=encoder)) as http:
        assert http.post("/feedback", json=verdict).status_code == 200
    with running(create_app(faq_index, encoder=encoder, feedback=False, query_log=False)) as http:
        assert error(http.post("/feedback", json=verdict), 403).startswith("this server takes no feedback")
        assert http.post("/search", json={"question": "refund"}).json()["results"][0]["query_id"] is None
    store = FeedbackStore(faq_index, readonly=True)
    assert len(store.verdicts()) == 1 and store.logged() == []
    store.close()


def test_fields_endpoint_offers_the_repeating_fields(faq_index, encoder):
    from search.server.app import create_app

    with running(create_app(faq_index, encoder=encoder, query_log=False)) as http:
        fields = http.get("/fields").json()["fields"]
        hits = http.post("/search", json={"question": "reset my password", "k": 1, "highlight": True}).json()
    assert list(fields) == ["category"] and {"account", "billing", "shipping"} <= set(fields["category"])
    top = hits["results"][0]["hits"][0]
    text = top["text"]
    assert [text[a:b].lower() for a, b in top["highlights"]["text"]] == ["password", "reset"]  # "I forgot my password, how do I reset it?"
    assert {v["key"] for v in top["variant_texts"]} == set(top["variants"]) - {top["key"]}


def test_access_log_and_offline_docs(faq_index, encoder, caplog):
    from search.server.app import create_app

    with caplog.at_level(logging.INFO, logger="bertdex.access"):
        with running(create_app(faq_index, encoder=encoder, access_log=True, query_log=False)) as http:
            http.post("/search", json={"question": "refund"})
            http.get("/nowhere")
            docs = http.get("/docs").text
            assets = {path: http.get(path) for path in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css")}
    lines = [record.getMessage() for record in caplog.records if record.name == "bertdex.access"]
    assert any(line.startswith("POST /search 200 ") and line.endswith("ms") for line in lines)
    assert any(line.startswith("GET /nowhere 404 ") for line in lines)
    assert "//cdn" not in docs and "https://" not in docs and "/docs/assets/swagger-ui-bundle.js" in docs
    assert all(r.status_code == 200 and len(r.content) > 100_000 for r in assets.values())


# -- the commands -----------------------------------------------------------------------------------


def test_serve_on_a_busy_port_says_so_in_one_line(faq_index):
    import socket

    from typer.testing import CliRunner

    from cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(faq_index), "--port", str(port)])
    assert result.exit_code == 1 and "starting:" not in result.output
    assert result.output.strip() == f"error: --port {port}: already in use on 127.0.0.1 (another server?); choose another port"


@pytest.mark.slow
def test_bertdex_feedback_command(faq_index):
    from typer.testing import CliRunner

    from cli import app

    feed(faq_index, unanswered=GIFT_CARDS + CRYPTO, right=[("I lost my password", "en-006")])
    result = CliRunner().invoke(app, ["feedback", str(faq_index)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = result.output
    assert "5 questions logged, 5 with no answer past the cut" in shown and "1 with an answer marked right" in shown
    # 0.563 on fp32 paths; a question path in bf16 (OpenVINO, where measured fastest) moves it by ~1e-3
    assert re.search(r"grouped at cosine >= 0\.56\d \(measured on 12 pairs of phrasings in the index's groups\)", shown)
    assert shown.index("Do you sell gift cards?") < shown.index("Can I pay with bitcoin?")
    both = CliRunner().invoke(app, ["tune", str(faq_index), "--feedback", "--queries", "q.jsonl", "--qrels", "q.tsv"])
    assert both.exit_code != 0 and "not both" in both.output


def test_tune_learns_from_the_answers_marked_right(faq_index, encoder):
    from search.quality.feedback import labelled_from_feedback
    from search.quality.tune import tune_index

    feed(faq_index, right=[("I lost my password", "en-006"), ("where is my package", "en-028"),
                           ("money back for my order", "en-010")])
    queries, qrels = labelled_from_feedback(faq_index)
    report = tune_index(faq_index, queries=queries, qrels=qrels, encoder=encoder, store=False, layers=[6])
    assert report.measured.source.startswith("labelled queries") and report.measured.queries == 3 and not report.stored
    assert 0 < report.best.metrics["mrr@10"] <= 1


@pytest.mark.slow
def test_serve_quiet_and_without_query_log_prints_and_logs_nothing(faq_index):
    import os
    import socket
    import subprocess
    import time

    import httpx

    from conftest import BERTDEX, ROOT
    from indexer.store.feedback import FeedbackStore

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([*BERTDEX, "serve", str(faq_index), "--port", str(port), "--quiet", "--no-query-log"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/search", json={"question": "refund"}, timeout=60)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "bertdex serve did not answer"
                time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()["results"][0]["query_id"] is None
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.stderr.read() == "" and process.stdout.read() == ""
    store = FeedbackStore(faq_index, readonly=True)
    assert store.logged() == []
    store.close()

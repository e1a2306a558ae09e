"""The HTTP service over real HTTP on loopback: a real uvicorn, the real model, a real index.

Every endpoint, every error status, the API key, micro-batching, writes during reads, the
`bertdex serve` command, and hypothesis-fuzzed request bodies (no 500s, nothing lost).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import BERTDEX, ROOT

KEY = "test-key-0123456789"
WRITER = {"X-API-Key": KEY}
PASSWORD_QUESTION = "I can't remember my password"


@contextmanager
def running(app):
    """Serve `app` with a real uvicorn on a free loopback port; yields an httpx client for it."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def client(faq_index, encoder):
    """A writable server (key KEY) over a private copy of the example FAQ."""
    from search.server.app import create_app

    with running(create_app(faq_index, api_key=KEY, encoder=encoder)) as http:
        yield http


@pytest.fixture(scope="module")
def shared(faq_index_master, encoder, tmp_path_factory):
    """One writable server for the fuzz tests (hypothesis wants no per-test fixtures)."""
    from search.server.app import create_app

    folder = tmp_path_factory.mktemp("served") / "index"
    shutil.copytree(faq_index_master, folder, ignore=shutil.ignore_patterns("write.lock"))
    with running(create_app(folder, api_key=KEY, encoder=encoder)) as http:
        yield http, folder


def first(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- searching ------------------------------------------------------------------------------------


def test_search_ranks_the_right_answer_first_with_the_searchers_scores(client, faq_index, encoder):
    from search import Searcher

    result = first(client.post("/search", json={"question": PASSWORD_QUESTION, "k": 3}))
    expected = Searcher(faq_index, encoder=encoder).search(PASSWORD_QUESTION, k=3)
    assert result["answered"] is True
    assert [h["key"] for h in result["hits"]] == [h.key for h in expected]
    assert [h["score"] for h in result["hits"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    top = result["hits"][0]
    assert top["group"] == "g-password-reset" and "Forgot password" in top["fields"]["answer"]
    assert top["rank"] == 1 and top["score"] > 0.8


def test_search_answers_a_list_of_questions_in_order(client):
    asked = ["How long until my refund arrives?", "the app crashes when I start it", "do you sell my data"]
    response = client.post("/search", json={"question": asked, "k": 1})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["question"] for r in results] == asked
    assert [r["hits"][0]["group"] for r in results] == ["g-refund-time", "g-app-crash", "g-privacy-sharing"]


def test_search_modes_filters_and_min_score(client):
    for mode in ("dense", "keyword", "hybrid"):
        hits = first(client.post("/search", json={"question": "track my order", "k": 2, "mode": mode}))["hits"]
        assert hits[0]["group"] == "g-track-order", mode
    hits = first(client.post("/search", json={"question": PASSWORD_QUESTION, "k": 5, "min_score": None,
                                              "filters": {"category": "billing"}}))["hits"]
    assert len(hits) == 5 and {h["fields"]["category"] for h in hits} == {"billing"}
    nothing = first(client.post("/search", json={"question": "What is the capital of Australia?", "min_score": 0.5}))
    assert {n: nothing[n] for n in ("question", "answered", "hits", "cut")} == \
        {"question": "What is the capital of Australia?", "answered": False, "hits": [], "cut": 0.5}
    assert nothing["closest"]["rank"] == 1 and nothing["closest"]["score"] < 0.5 and nothing["closest"]["band"] == "below"


def test_hostile_filters_and_keys_are_values_not_sql(client):
    hostile = "x' OR '1'='1"
    hits = first(client.post("/search", json={"question": PASSWORD_QUESTION,
                                              "filters": {"category": hostile, hostile: "1"}}))["hits"]
    assert hits == []
    error(client.get("/documents/en-001' OR '1'='1"), 404)
    error(client.delete("/documents/%25' OR 1=1 --", headers=WRITER), 404)
    assert client.get("/health").json()["documents"] == 50


@pytest.mark.parametrize("body, words", [
    ({"question": "hi", "k": 101}, "k: Input should be less than or equal to 100"),
    ({"question": "hi", "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"question": "x" * 2001}, "question: String should have at most 2000 characters"),
    ({"question": ["hi"] * 33}, "question: List should have at most 32 items"),
    ({"question": "   "}, "empty question"),
    ({"question": []}, "question: List should have at least 1 item"),
    ({"question": "hi", "mode": "fuzzy"}, "mode: Input should be 'dense', 'keyword' or 'hybrid'"),
    ({"question": "hi", "weight": 2}, "weight: Input should be less than or equal to 1"),
    ({"question": "hi", "filters": {"a": {"b": 1}}}, "filters.a"),
    ({"question": "hi", "limit": 3}, "limit: Extra inputs are not permitted"),
    ({}, "question: Field required"),
])
def test_search_limits_answer_422_naming_the_field(client, body, words):
    assert words in error(client.post("/search", json=body), 422)


def test_malformed_json_and_oversized_bodies(client):
    message = error(client.post("/search", content=b'{"question": ', headers={"Content-Type": "application/json"}), 422)
    assert message.startswith("the body is not valid JSON")
    big = {"question": "hi", "filters": {"pad": "x" * 1_100_000}}
    assert "over 1,000,000 bytes" in error(client.post("/search", json=big), 413)

    def chunks():  # no Content-Length: the guard counts the streamed bytes
        for _ in range(20):
            yield b"x" * 100_000

    assert "over 1,000,000 bytes" in error(client.post("/search", content=chunks()), 413)


# -- documents ------------------------------------------------------------------------------------


def test_get_document_and_404(client):
    response = client.get("/documents/en-001")
    assert response.status_code == 200
    body = response.json()
    assert body["key"] == "en-001" and body["text"] == "I forgot my password, how do I reset it?"
    assert body["group"] == "g-password-reset" and body["variants"] == ["en-001", "en-005", "en-006"]
    assert body["fields"]["category"] == "account"
    assert "no entry with key 'nope'" in error(client.get("/documents/nope"), 404)


def test_no_request_path_reaches_the_file_system(client):
    for path in ("/documents/../../etc/passwd", "/documents/..%2f..%2fbertdex.db", "/../bertdex.db",
                 "/static/../server.py", "/app.js/../../guard.py", "/%2e%2e/%2e%2e/etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "root:" not in response.text and "SQLite" not in response.text


def test_writes_need_the_api_key(client):
    batch = {"documents": [{"key": "new-1", "text": "How do I pet a cat?"}]}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = client.post("/documents", json=batch, headers=headers)
        assert "API key" in error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    error(client.delete("/documents/en-001"), 401)
    error(client.post("/documents", content=b"not json", headers={"Content-Type": "application/json"}), 401)
    assert client.get("/health").json()["documents"] == 50
    assert client.post("/documents", json=batch, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_a_server_without_key_or_read_only_refuses_writes_with_403(faq_index, encoder):
    from search.server.app import create_app

    batch = {"documents": [{"key": "new-1", "text": "How do I pet a cat?"}]}
    for app in (create_app(faq_index, api_key=None, encoder=encoder),
                create_app(faq_index, api_key=KEY, writable=False, encoder=encoder)):
        with running(app) as http:
            assert "read-only" in error(http.post("/documents", json=batch, headers=WRITER), 403)
            assert http.get("/health").json() == {"status": "ok", "documents": 50, "generation": 1, "writable": False}
            assert first(http.post("/search", json={"question": PASSWORD_QUESTION}))["answered"]


def test_post_documents_adds_updates_and_skips_unchanged_in_one_commit(client):
    before = client.get("/health").json()
    docs = [{"key": "pets-1", "text": "Can I bring my dog to the store?", "fields": {"answer": "Yes, on a leash.",
             "category": "store"}, "group": "g-pets"},
            {"key": "pets-2", "text": "Are cats allowed inside?", "fields": {"answer": "Cats too."}}]
    added = client.post("/documents", json={"documents": docs}, headers=WRITER).json()
    assert added == {"added": 2, "updated": 0, "unchanged": 0, "documents": 52, "generation": before["generation"] + 1}
    hit = first(client.post("/search", json={"question": "may I take my puppy into the shop", "k": 1}))["hits"][0]
    assert hit["key"] == "pets-1" and hit["fields"] == {"answer": "Yes, on a leash.", "category": "store"}
    docs[1]["text"] = "Are  cats\tallowed in the store?"
    again = client.post("/documents", json={"documents": docs}, headers=WRITER).json()
    assert (again["added"], again["updated"], again["unchanged"], again["documents"]) == (0, 1, 1, 52)
    assert client.get("/documents/pets-2").json()["text"] == "Are cats allowed in the store?"


@pytest.mark.parametrize("documents, words", [
    ([{"key": "a", "text": "fine"}, {"key": "b", "text": " \t "}], "documents[1]: the text is empty"),
    ([{"key": "a", "text": "\u200b\u2060"}], "documents[0]: the text is empty"),
    ([{"key": "a", "text": "\ufdfa" * 5_000}], "documents[0]: the text has 90,000 characters after normalization; the limit is 20,000"),
    ([{"key": "\u200b", "text": "x"}], "documents[0]: the key is empty"),
    ([{"key": "a", "text": "fine"}, {"key": "a", "text": "again"}], "documents[1]: key 'a' repeats documents[0]"),
    ([{"key": "a", "text": "nul \x00 inside"}], "documents[0]: the text contains a NUL character"),
    ([{"key": "", "text": "x"}], "documents[0].key: String should have at least 1 character"),
    ([{"key": "a\nb", "text": "x"}], "documents[0].key: String should match pattern"),
    ([{"key": "a", "text": "x" * 20_001}], "documents[0].text: String should have at most 20000 characters"),
    ([{"key": "a", "text": "x", "fields": {"n": float("nan")}}], "documents[0].fields.n"),
    ([{"key": "a", "text": "x", "fields": {"n": [1, 2]}}], "documents[0].fields.n"),
    ([{"key": "a", "text": "x", "vector": [1]}], "documents[0].vector: Extra inputs are not permitted"),
    ([{"key": f"k{i}", "text": "x"} for i in range(101)], "documents: List should have at most 100 items"),
    ([], "documents: List should have at least 1 item"),
])
def test_bad_documents_answer_422_naming_the_item_and_write_nothing(client, documents, words):
    import json

    body = json.dumps({"documents": documents}, allow_nan=True)
    response = client.post("/documents", content=body, headers={**WRITER, "Content-Type": "application/json"})
    assert words in error(response, 422)
    assert client.get("/health").json() == {"status": "ok", "documents": 50, "generation": 1, "writable": True}


def test_delete_removes_one_entry_and_404s_a_missing_key(client):
    assert client.delete("/documents/en-005", headers=WRITER).json() == {"deleted": "en-005", "documents": 49,
                                                                        "generation": 2}
    error(client.get("/documents/en-005"), 404)
    hits = first(client.post("/search", json={"question": PASSWORD_QUESTION, "k": 50}))["hits"]
    assert "en-005" not in [h["key"] for h in hits] and "en-005" not in hits[0]["variants"]
    assert "no entry with key 'en-005'" in error(client.delete("/documents/en-005", headers=WRITER), 404)
    assert client.get("/health").json()["generation"] == 2  # the refused delete committed nothing


def test_a_write_while_another_process_holds_the_index_answers_409(client, faq_index):
    from indexer.store.folder import IndexWriter

    with IndexWriter.open(faq_index):
        response = client.post("/documents", json={"documents": [{"key": "z", "text": "hello"}]}, headers=WRITER)
        assert "locked by pid" in error(response, 409)
    assert client.post("/documents", json={"documents": [{"key": "z", "text": "hello"}]}, headers=WRITER).status_code == 200


def test_writes_on_a_damaged_index_answer_503_json_and_reads_go_on(client, faq_index):
    path = faq_index / "vectors.1.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    response = client.post("/documents", json={"documents": [{"key": "z", "text": "hello"}]}, headers=WRITER)
    assert "checksum differs" in error(response, 503)
    assert "checksum differs" in error(client.delete("/documents/en-001", headers=WRITER), 503)
    assert client.get("/health").json()["generation"] == 1
    assert first(client.post("/search", json={"question": PASSWORD_QUESTION}))["answered"]


def test_a_non_ascii_api_key_matches_when_sent_as_utf8(faq_index, encoder):
    from search.server.app import create_app

    key = "clé-열쇠-0123456789"
    batch = {"documents": [{"key": "new-1", "text": "How do I pet a cat?"}]}
    with running(create_app(faq_index, api_key=key, encoder=encoder)) as http:
        assert "API key" in error(http.post("/documents", json=batch, headers={"X-API-Key": key.encode("latin-1", "replace")}), 401)
        assert http.post("/documents", json=batch, headers={"X-API-Key": key.encode()}).status_code == 200


def test_readers_keep_answering_during_writes(client):
    written, answers, stop = [], [], threading.Event()

    def write():
        for batch in range(4):
            docs = [{"key": f"w-{batch}-{i}", "text": f"Question number {i} about topic {batch} of the write test"}
                    for i in range(20)]
            assert client.post("/documents", json={"documents": docs}, headers=WRITER).status_code == 200
            written.extend(d["key"] for d in docs)
        stop.set()

    def read():
        while not stop.is_set():
            response = client.post("/search", json={"question": PASSWORD_QUESTION, "k": 1})
            answers.append((response.status_code, response.json()["results"][0]["hits"][0]["group"]))

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(write), pool.submit(read), pool.submit(read)]
        for future in futures:
            future.result(timeout=120)
    assert len(answers) >= 4 and set(answers) == {(200, "g-password-reset")}
    assert client.get("/health").json()["documents"] == 50 + len(written) == 130


# -- batching -------------------------------------------------------------------------------------


def test_concurrent_questions_share_forward_passes_and_get_their_own_answers(faq_index, encoder):
    from search import Searcher
    from search.server.app import create_app

    questions = ["How long does shipping take?", PASSWORD_QUESTION, "my package never came", "cancel my plan",
                 "two identical payments", "redeem a gift card", "unsubscribe from emails", "student discount"]
    expected = Searcher(faq_index, encoder=encoder).search_many(questions, k=2)
    app = create_app(faq_index, api_key=KEY, encoder=encoder, batch_window=0.05)
    with running(app) as http:
        gate = threading.Barrier(len(questions))

        def ask(question):
            gate.wait()
            return first(http.post("/search", json={"question": question, "k": 2}))["hits"]

        with ThreadPoolExecutor(len(questions)) as pool:
            answers = list(pool.map(ask, questions))
        stats = http.get("/info").json()["server"]["batching"]
    for hits, want in zip(answers, expected):
        assert [h["key"] for h in hits] == [h.key for h in want]
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in want], abs=1e-5)
    assert stats["requests"] == len(questions) and stats["batches"] < len(questions) and stats["largest"] >= 2


def test_batcher_keeps_one_requests_error_to_itself(faq_index, encoder):
    from indexer.errors import BertdexError
    from search import Searcher
    from search.server.batching import MicroBatcher

    batcher = MicroBatcher(Searcher(faq_index, encoder=encoder), window=0.2)
    try:
        good = batcher.submit(["track my order"], 1)
        bad = batcher.submit(["   "], 1)
        keyword = batcher.submit(["refund"], 1, mode="keyword")
        assert good.result(timeout=60)[0][0].group == "g-track-order"
        with pytest.raises(BertdexError, match="empty question"):
            bad.result(timeout=60)
        assert keyword.result(timeout=60)[0][0].group in {"g-refund-time", "g-refund-subscription"}
        assert batcher.stats() == {"batches": 1, "requests": 3, "questions": 3, "largest": 3}
    finally:
        batcher.close()


# -- the rest -------------------------------------------------------------------------------------


def test_health_info_openapi_page_and_unknown_routes(client):
    assert client.get("/health").json() == {"status": "ok", "documents": 50, "generation": 1, "writable": True}
    info = client.get("/info").json()
    assert info["documents"] == 50 and info["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["server"]["limits"]["k"] == 100 and "folder" not in info
    schema = client.get("/openapi.json").json()
    assert {"/search", "/documents", "/documents/{key}", "/health", "/info"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "Customer's question" in page.text and "고객 질문" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert error(client.get("/nowhere"), 404) == "Not Found"
    assert error(client.put("/search"), 405) == "Method Not Allowed"


def test_check_bind_refuses_a_keyless_writable_server_off_loopback():
    from indexer.errors import BertdexError
    from search.server.app import check_bind

    assert check_bind("127.0.0.1", None, False) is False
    assert check_bind("::1", KEY, False) is True
    assert check_bind("0.0.0.0", None, True) is False
    assert check_bind("0.0.0.0", KEY, False) is True
    with pytest.raises(BertdexError, match="refusing to serve on 0.0.0.0 without an API key"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(BertdexError, match="the API key is empty"):
        check_bind("127.0.0.1", "  ", False)


def test_bertdex_serve_command(faq_index, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    # the refusal comes before anything loads: checked in-process, the real start below as a subprocess
    refused = CliRunner().invoke(app, ["serve", str(faq_index), "--host", "0.0.0.0"], env={"BERTDEX_API_KEY": ""})
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines()[-1].startswith("error: refusing to serve on 0.0.0.0 without an API key")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([*BERTDEX, "serve", str(faq_index), "--port", str(port), "--api-key-file", str(key_file)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "bertdex serve did not answer"
                time.sleep(0.2)
        added = httpx.post(f"{base}/documents", headers=WRITER, timeout=60,
                           json={"documents": [{"key": "cli-1", "text": "Do you have a store in Lisbon?"}]})
        assert added.status_code == 200 and added.json()["documents"] == 51
        assert httpx.post(f"{base}/documents", json={"documents": []}, timeout=60).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
    logged = process.stderr.read()
    assert logged.startswith("starting: ") and " POST /documents 200 " in logged and " POST /documents 401 " in logged


# -- fuzzing --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
search_bodies = st.fixed_dictionaries(
    {},
    optional={"question": st.text(max_size=60) | st.lists(st.text(max_size=30), max_size=4) | json_values,
              "k": st.integers(-5, 120) | json_values, "mode": st.sampled_from(["dense", "keyword", "hybrid", "x"]),
              "min_score": st.floats(-2, 2) | json_values, "weight": st.floats(-1, 2),
              "filters": st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.integers(), max_size=3)
              | json_values, "extra": json_values},
) | json_values


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(body=search_bodies)
def test_fuzzed_search_bodies_never_500(shared, body):
    http, _ = shared
    response = http.post("/search", json=body)
    assert response.status_code in (200, 422), response.text
    data = response.json()
    if response.status_code == 200:
        assert all(isinstance(r["hits"], list) for r in data["results"])
    else:
        assert data["status"] == 422 and data["error"]


FUZZED = {"accepted": 0, "refused": 0}  # so the check after fuzzing knows the writes were exercised
documents = st.lists(
    st.fixed_dictionaries(
        {"key": st.text(min_size=1, max_size=12).map(lambda s: "fz-" + s), "text": st.text(max_size=80)},
        optional={"fields": st.dictionaries(st.text(max_size=8), st.text(max_size=20) | st.integers() | json_values,
                                            max_size=3),
                  "group": st.none() | st.text(max_size=8), "junk": json_values},
    ),
    max_size=5,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(body=st.fixed_dictionaries({"documents": documents}) | json_values)
@example(body={"documents": [{"key": "fz-kept", "text": "Can I pay with a gift card?", "fields": {"n": 1}}]})  # accepted
@example(body={"documents": [{"key": "fz-empty", "text": "\u200b"}]})  # refused
def test_fuzzed_document_bodies_never_500_and_lose_nothing(shared, body):
    http, _ = shared
    before = http.get("/health").json()
    response = http.post("/documents", json=body, headers=WRITER)
    assert response.status_code in (200, 422), response.text
    after = http.get("/health").json()
    if response.status_code == 422:
        assert after == before  # refused as a whole: nothing written
        FUZZED["refused"] += 1
        return
    FUZZED["accepted"] += 1
    from indexer.store.keywords import normalize_text

    for doc in body["documents"]:
        stored = http.get("/documents/" + quote(doc["key"].strip(), safe=""))
        assert stored.status_code == 200, doc
        assert stored.json()["text"] == normalize_text(doc["text"])
        assert stored.json()["fields"] == doc.get("fields", {})
    assert after["documents"] >= before["documents"]


def test_after_fuzzing_every_original_entry_is_intact(shared):
    from indexer.store.verify import verify_index

    http, folder = shared
    if sum(FUZZED.values()):  # when the fuzz test ran first (the file's order), both outcomes happened
        assert FUZZED["accepted"] > 0 and FUZZED["refused"] > 0, FUZZED
        assert http.get("/health").json()["documents"] > 50
    for number in range(1, 51):
        assert http.get(f"/documents/en-{number:03d}").status_code == 200
    assert verify_index(folder).ok

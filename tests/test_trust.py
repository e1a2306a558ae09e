"""Trust, second pass: damage is never an answer, verify tells damage from duplicates (issue 25).

A score is a cosine or it is not shown: every answer checks what FAISS returned (score range, the
returned vectors' norms, no id twice); opening checks what it can afford; `info` says when the
vectors file is missing or fails its checks. Also: every option's range checked once (exit 2), and
the small lies of the server and of --ray. The untested faults are in tests/test_faults.py.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from conftest import run_cli
from indexer.errors import IndexDamaged
from search import Searcher
from test_integrity import PRIVACY, faiss_file, flip, one_line_error, rerecord
from test_server import running


def scale_in_memory(searcher, row: int, factor: float) -> None:
    """Scale one stored vector of the searcher's loaded index (damage that opening did not see)."""
    with searcher._snapshot():
        index = searcher.vectors.segments[0].index  # the index's one segment
        inner = faiss.downcast_index(index.index)
        stored = faiss.rev_swig_ptr(inner.get_xb(), index.ntotal * index.d)
        stored.reshape(index.ntotal, index.d)[row] *= factor


def test_an_impossible_score_is_damage_not_an_answer(faq_index, encoder):
    searcher = Searcher(faq_index, encoder=encoder)
    assert searcher.search(PRIVACY, k=3)[0].score == pytest.approx(1.0, abs=1e-3)
    scale_in_memory(searcher, 0, 55.49)  # the issue's 64 flipped bytes gave scores of 55.49 and 32.00
    with pytest.raises(IndexDamaged, match="bertdex repair"):
        for question in ("How do I reset my password?", PRIVACY, "refund"):
            searcher.search(question, k=5)


def test_a_returned_vector_off_unit_length_is_damage_even_when_its_score_looks_fine(faq_index, encoder):
    searcher = Searcher(faq_index, encoder=encoder)
    hits = searcher.search(PRIVACY, k=5)
    with searcher._snapshot():
        row = searcher.db.execute("SELECT p.id FROM passages p JOIN documents d ON d.id = p.document_id "
                                  "WHERE d.key = ?", [hits[-1].key]).fetchone()[0]
        position = int(np.flatnonzero(faiss.vector_to_array(searcher.vectors.segments[0].index.id_map) == row)[0])
    scale_in_memory(searcher, position, 0.5)  # half length: its score halves, well inside [-1, 1]
    with pytest.raises(IndexDamaged, match="not of unit length.*bertdex repair"):
        searcher.search(PRIVACY, k=5)


def test_an_id_returned_twice_is_damage(faq_index, encoder):
    searcher = Searcher(faq_index, encoder=encoder)
    with searcher._snapshot():
        id_map = searcher.vectors.segments[0].index.id_map
        ids = faiss.vector_to_array(id_map)
        ids[1] = ids[0]
        faiss.copy_array_to_vector(ids, id_map)
    with pytest.raises(IndexDamaged, match="twice"):
        searcher.search(searcher.get(searcher.db.execute(
            "SELECT d.key FROM passages p JOIN documents d ON d.id = p.document_id WHERE p.id = ?",
            [int(ids[0])]).fetchone()[0]).text, k=10)


def swap_vectors(path, a: int, b: int) -> None:
    """Swap two stored vectors of a flat index in place; the file stays valid, only its checksum tells."""
    index = faiss.read_index(str(path))
    inner = faiss.downcast_index(index.index)
    stored = faiss.rev_swig_ptr(inner.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    stored[[a, b]] = stored[[b, a]]
    faiss.write_index(index, str(path))


@pytest.mark.parametrize("damage", ["flip", "swap vectors", "swap ids"])
def test_opening_refuses_the_issues_three_damages(faq_index, encoder, damage):
    path = faiss_file(faq_index)
    if damage == "flip":
        flip(path, path.stat().st_size // 2, 64)
    elif damage == "swap vectors":
        swap_vectors(path, 3, 17)
    else:
        index = faiss.read_index(str(path))
        ids = faiss.vector_to_array(index.id_map)
        ids[[3, 17]] = ids[[17, 3]]
        faiss.copy_array_to_vector(ids, index.id_map)
        faiss.write_index(index, str(path))
    with pytest.raises(IndexDamaged, match="bertdex repair"):
        Searcher(faq_index, encoder=encoder)


@pytest.mark.slow
def test_damage_is_exit_7_on_the_cli_503_over_http_and_info_says_so(faq_index, encoder):
    from search.server.app import create_app

    with running(create_app(faq_index, api_key="k" * 16, encoder=encoder)) as http:
        assert http.post("/search", json={"question": PRIVACY}).status_code == 200
        data = faq_index.parent / "more.jsonl"
        data.write_text(json.dumps({"id": "new-1", "question": "Do you sell gift cards?", "group": "g-new"}) + "\n", encoding="utf-8")
        assert run_cli("add", faq_index, data).returncode == 0  # a new generation (a segment) the server has not read
        path = faiss_file(faq_index, newest=True)
        flip(path, path.stat().st_size // 2, 64)
        answer = http.post("/search", json={"question": PRIVACY})
        assert answer.status_code == 503 and "bertdex repair" in answer.json()["error"], answer.text
        health = http.get("/info").json()
        assert "checksum" in health["vectors_file"] and health["vectors_file"] != "ok"
    line = one_line_error(run_cli("query", faq_index, PRIVACY), 7)
    assert "bertdex repair" in line


@pytest.mark.parametrize("damage, words", [("delete", "is missing"), ("truncate", "the manifest recorded")])
def test_info_says_when_the_vectors_file_is_missing_or_cut(faq_index, damage, words):
    from indexer.store.info import index_info

    assert index_info(faq_index)["vectors_file"] == "ok"
    path = faiss_file(faq_index)
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    details = index_info(faq_index)
    assert words in details["vectors_file"]
    assert any(words in warning for warning in details["warnings"])


# -- verify: damage, not duplicates -----------------------------------------------------------------

BOILERPLATE = ("Thank you for contacting the support desk of Example Networks. Please keep your customer number "
               "at hand, read our terms of service, and note that our offices are closed on public holidays. "
               "Calls may be recorded for training and quality purposes. For urgent outages of fibre, cable or "
               "mobile service, call the emergency line printed on your invoice, day or night. ")


@pytest.fixture(scope="module")
def boilerplate_master(tmp_path_factory):
    """40 long entries that start with the same boilerplate: their first windows have identical vectors."""
    from indexer import build_index

    rows = [{"id": f"b-{i:02d}", "text": BOILERPLATE + f"Case {i}: the {word} in room {i} stopped working."}
            for i, word in enumerate(["router", "modem", "phone", "printer", "screen"] * 8)]
    data = tmp_path_factory.mktemp("boilerplate") / "entries.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    folder = data.parent / "index"
    build_index(data, folder, max_length=64)
    return folder


@pytest.fixture(scope="module")
def short_encoder(boilerplate_master):
    """The suite's model reading 64 tokens, as the boilerplate index's recipe says."""
    from indexer.embed.resolve import encoder_for
    from indexer.store.folder import open_manifest

    return encoder_for(open_manifest(boilerplate_master).recipe)


@pytest.fixture
def boilerplate(boilerplate_master, tmp_path):
    import shutil

    folder = tmp_path / "index"
    shutil.copytree(boilerplate_master, folder, ignore=shutil.ignore_patterns("write.lock"))
    return folder


@pytest.mark.slow
def test_verify_is_clean_on_entries_that_share_boilerplate_and_repair_keeps_it_clean(boilerplate, short_encoder):
    from indexer.store.repair import repair_index
    from indexer.store.verify import verify_index

    db_vectors = faiss.read_index(str(faiss_file(boilerplate)))
    assert db_vectors.ntotal >= 2 * 40  # several windows each, the first ones the same text
    report = verify_index(boilerplate, text_sample=20, encoder=short_encoder)
    assert report.ok, report.problems
    repair_index(boilerplate, encoder=short_encoder)
    assert verify_index(boilerplate, text_sample=20, encoder=short_encoder).ok


@pytest.mark.slow
def test_verify_still_finds_swapped_vectors_among_duplicates_and_repair_ends_clean(boilerplate, short_encoder):
    """Two entries' own (last) windows swapped, the checksum re-recorded: only the text check can tell."""
    from indexer.store.folder import connect
    from indexer.store.integrity import faiss_record
    from indexer.store.repair import repair_index
    from indexer.store.verify import verify_index

    path = faiss_file(boilerplate)
    index = faiss.read_index(str(path))
    ids = faiss.vector_to_array(index.id_map)
    db = connect(boilerplate)
    last = [db.execute("SELECT max(p.id) FROM passages p JOIN documents d ON d.id = p.document_id WHERE d.key = ?",
                       [key]).fetchone()[0] for key in ("b-00", "b-01")]
    swap_vectors(path, *[int(np.flatnonzero(ids == p)[0]) for p in last])
    rerecord(db, boilerplate, faiss_record(path, index.ntotal))
    db.close()
    report = verify_index(boilerplate, text_sample=20, encoder=short_encoder)
    assert not report.ok and any("not found by their own text" in p for p in report.problems), report.problems
    repair_index(boilerplate, encoder=short_encoder)
    assert verify_index(boilerplate, text_sample=20, encoder=short_encoder).ok


# -- every option's range, checked once -------------------------------------------------------------

def usage_error(result, *words: str) -> str:
    line = one_line_error(result, 2)
    assert all(word in line for word in words), line
    return line


@pytest.mark.parametrize("option, value", [
    ("--window-length", "0"), ("--window-length", "100000"), ("--max-length", "0"), ("--max-length", "100000"),
    ("--stride", "-1"), ("--stride", "128"),
])
def test_index_options_out_of_range_exit_2_naming_the_option_and_write_nothing(tmp_path, option, value):
    from conftest import EXAMPLES

    folder = tmp_path / "index"
    usage_error(run_cli("index", folder, EXAMPLES / "faq_en.csv", "-t", "question", option, value), option, value)
    assert not folder.exists()


@pytest.mark.parametrize("args", [("query", "-k", "0"), ("query", "-k", "1000000"), ("query", "--min-score", "nan"),
                                  ("duplicates", "--threshold", "1.5"), ("duplicates", "--threshold", "nan")])
def test_search_options_out_of_range_exit_2(faq_index, args):
    command, option, value = args
    question = ["refund"] if command == "query" else []
    usage_error(run_cli(command, faq_index, *question, option, value), option, value)


@pytest.mark.parametrize("row, words", [
    ({"id": "x", "question": "a question", "group": "g", "note": "a\u0000b"}, "NUL"),
    ({"id": "x", "question": "a question", "group": "g", "note": "n" * 5_000_000}, "the limit is"),
    ({"id": "x", "question": "a question", "group": "g\u0000"}, "NUL"),
])
def test_every_stored_field_is_checked_like_the_text(faq_index, tmp_path, row, words):
    from test_integrity import keys

    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    before = keys(faq_index)
    result = run_cli("add", faq_index, data)  # the index's group field: group
    line = one_line_error(result, 1)
    assert f"{data}:1" in line and words in line
    assert keys(faq_index) == before


def test_http_refuses_nul_in_fields_and_feedback_text(faq_index, encoder):
    from search.server.app import create_app

    key = {"X-API-Key": "k" * 16}
    with running(create_app(faq_index, api_key="k" * 16, encoder=encoder)) as http:
        stored = http.post("/documents", headers=key, json={"documents": [
            {"key": "n-1", "text": "Do you ship abroad?", "fields": {"note": "a\u0000b"}}]})
        assert stored.status_code == 422 and "documents[0]" in stored.json()["error"] and "NUL" in stored.json()["error"]
        given = http.post("/feedback", headers=key, json={"question": "a\u0000b", "key": "en-001", "verdict": "up"})
        assert given.status_code == 422 and "NUL" in given.json()["error"], given.text
        asked = http.post("/search", json={"question": "a\u0000b"})
        assert asked.status_code == 422 and "NUL" in asked.json()["error"], asked.text


# -- the small lies -----------------------------------------------------------------------------------

def test_each_refusal_gives_its_real_reason(faq_index, encoder):
    from search.server.app import create_app

    document = {"documents": [{"key": "r-1", "text": "Do you ship abroad?"}]}
    with running(create_app(faq_index, encoder=encoder)) as http:  # keyless, not --read-only
        refused = http.post("/documents", json=document)
        assert refused.status_code == 403 and "without an API key" in refused.json()["error"]
        assert "--read-only" not in refused.json()["error"]
    with running(create_app(faq_index, api_key="k" * 16, writable=False, feedback=False, encoder=encoder,
                            read_only_reason="started with --read-only")) as http:
        refused = http.post("/documents", headers={"X-API-Key": "k" * 16}, json=document)
        assert refused.status_code == 403 and "started with --read-only" in refused.json()["error"]


def test_serve_workers_start_line_agrees_with_info(faq_index, encoder, monkeypatch):
    """`serve --workers 2` said "feedback open on loopback" while every worker's /info said feedback: off."""
    from search.server import app as server
    from search.server.service import access_line

    monkeypatch.setenv(server.WORKER_OPTIONS, json.dumps({"folder": str(faq_index), "batch_window": 0.002,
                                                          "max_batch": 8, "threads": 1, "access_log": False}))
    line = access_line(writable=False, read_only=False, workers=2, folder_writable=True)
    with running(server.worker_app()) as http:
        info = http.get("/info").json()["server"]
        given = http.post("/feedback", json={"question": "refund", "key": "en-001", "verdict": "up"})
    assert info["feedback"] == "off" and "feedback open" not in line and "no feedback" in line
    assert given.status_code == 403 and "--read-only" not in given.json()["error"] and "workers" in given.json()["error"]


def test_a_keyless_server_answers_only_requests_addressed_to_it(faq_index, encoder):
    """DNS rebinding: a page on evil.example resolves its name to 127.0.0.1 and reaches a keyless server."""
    from search.server.app import create_app

    with running(create_app(faq_index, encoder=encoder)) as http:
        port = http.base_url.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            refused = http.post("/search", headers={"Host": host}, json={"question": "refund"})
            assert refused.status_code == 403 and "Host" in refused.json()["error"], host
    with running(create_app(faq_index, api_key="k" * 16, encoder=encoder)) as http:  # a key guards the writes
        assert http.get("/health", headers={"Host": "search.example.com"}).status_code == 200


@pytest.mark.slow
def test_an_unreachable_ray_address_is_one_line_and_quick(tmp_path):
    import time

    from conftest import EXAMPLES

    started = time.monotonic()
    result = run_cli("index", tmp_path / "index", EXAMPLES / "faq_en.csv", "-t", "question", "-q",
                     "--ray", "ray://127.0.0.1:1")
    line = one_line_error(result, 1)
    assert "--ray ray://127.0.0.1:1" in line and time.monotonic() - started < 25

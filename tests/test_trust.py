"""Trust, second pass: damage is never an answer, verify tells damage from duplicates (issue 25).

A score is a cosine or it is not shown: every answer checks what FAISS returned (score range, the
returned vectors' norms, no id twice); opening checks what it can afford; `info` says when the
vectors file is missing or fails its checks.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from conftest import run_cli
from indexer.errors import IndexDamaged
from search import Searcher
from test_integrity import PRIVACY, faiss_file, flip, one_line_error
from test_server import running


def scale_in_memory(searcher, row: int, factor: float) -> None:
    """Scale one stored vector of the searcher's loaded index (damage that opening did not see)."""
    with searcher._snapshot():
        inner = faiss.downcast_index(searcher.vectors.index)
        stored = faiss.rev_swig_ptr(inner.get_xb(), searcher.vectors.ntotal * searcher.vectors.d)
        stored.reshape(searcher.vectors.ntotal, searcher.vectors.d)[row] *= factor


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
        position = int(np.flatnonzero(faiss.vector_to_array(searcher.vectors.id_map) == row)[0])
    scale_in_memory(searcher, position, 0.5)  # half length: its score halves, well inside [-1, 1]
    with pytest.raises(IndexDamaged, match="not of unit length.*bertdex repair"):
        searcher.search(PRIVACY, k=5)


def test_an_id_returned_twice_is_damage(faq_index, encoder):
    searcher = Searcher(faq_index, encoder=encoder)
    with searcher._snapshot():
        ids = faiss.vector_to_array(searcher.vectors.id_map)
        ids[1] = ids[0]
        faiss.copy_array_to_vector(ids, searcher.vectors.id_map)
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
        assert run_cli("delete", faq_index, "en-001").returncode == 0  # a new generation the server has not read
        path = faiss_file(faq_index)
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
    db["manifest"].upsert({"name": "faiss_file", "value": json.dumps(faiss_record(path, index.ntotal))}, pk="name")
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


# -- the untested faults --------------------------------------------------------------------------------

def entries_file(path, count: int, prefix: str = "m"):
    path.write_text("".join(json.dumps({"id": f"{prefix}-{i}", "question": f"How do I change setting {i} of my account?",
                                        "group": f"g-{prefix}{i}"}) + "\n" for i in range(count)), encoding="utf-8")
    return path


def generation_and_keys(folder):
    from indexer.store.folder import open_manifest
    from test_integrity import keys

    return open_manifest(folder).generation, keys(folder)


def full_disk_at(step: str, monkeypatch) -> None:
    """Make one step of the commit fail as a full disk does (FAISS and SQLite name no errno there)."""
    import errno
    import sqlite3

    from indexer.store import folder as store

    def failing(*args, **kwargs):
        if step == "commit":
            raise sqlite3.OperationalError("database or disk is full")
        if step == "partial":  # FAISS's own message for a short write
            raise RuntimeError("Error in faiss::write_index: Error: 'ret == (size * 4)' failed: write error in x.partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {"partial": (store.faiss, "write_index"), "fsync": (store.os, "fsync"), "renamed": (store.os, "replace"),
              "commit": (store, "_commit_sqlite")}[step]
    if step == "partial":  # FAISS cannot say why: the writer asks the file system how much space is left
        import collections

        monkeypatch.setattr(store.integrity.os, "statvfs",
                            lambda path: collections.namedtuple("S", "f_bavail f_frsize")(3, 4096))
    monkeypatch.setattr(*target, failing)


@pytest.mark.parametrize("step", ["partial", "fsync", "renamed", "commit"])
def test_a_full_disk_at_each_step_of_a_commit_leaves_the_previous_generation(faq_index, encoder, tmp_path,
                                                                              monkeypatch, step):
    from indexer import add_documents
    from indexer.errors import DiskFull
    from indexer.failures import explain
    from indexer.store.verify import verify_index

    before = generation_and_keys(faq_index)
    data = entries_file(tmp_path / "more.jsonl", 5)
    with monkeypatch.context() as patched:
        full_disk_at(step, patched)
        with pytest.raises(DiskFull) as failed:
            add_documents(faq_index, data, encoder=encoder)
    message, status = explain(failed.value, faq_index)
    assert status == 8 and message.startswith("disk full")
    assert generation_and_keys(faq_index) == before
    assert sorted(p.name for p in faq_index.glob("vectors.*")) == [f"vectors.{before[0]}.faiss"]
    assert verify_index(faq_index).ok
    assert add_documents(faq_index, data, encoder=encoder).added == 5  # space again: the same command works


@pytest.mark.slow
def test_a_real_full_file_system_says_disk_full_and_loses_nothing(faq_index_master, tmp_path):
    """A 2 MiB tmpfs filled to 100 KiB free: the command fails in one line, exit 8, the index as it was."""
    import shutil
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        folder = mount / "index"
        shutil.copytree(faq_index_master, folder, ignore=shutil.ignore_patterns("write.lock"))
        before = generation_and_keys(folder)
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * (free - 100 * 1024))
        data = entries_file(tmp_path / "more.jsonl", 400)
        line = one_line_error(run_cli("add", folder, data, "-q"), 8)
        assert "disk full" in line
        assert generation_and_keys(folder) == before and not list(folder.glob("*.partial"))
        (mount / "filler").unlink()
        from indexer.store.verify import verify_index

        assert verify_index(folder).ok
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def stored_by_key(folder) -> dict[str, tuple]:
    """key -> (text, fields, group, its vectors in passage order): what an index holds."""
    from indexer.store import ann
    from indexer.store.folder import connect, open_manifest, open_vectors

    db = connect(folder, readonly=True)
    try:
        vectors = open_vectors(folder, open_manifest(folder), checksum=True)
        rows = db.execute("SELECT d.key, d.text, d.fields, d.group_key, p.id FROM documents d "
                          "JOIN passages p ON p.document_id = d.id ORDER BY d.key, p.start").fetchall()
    finally:
        db.close()
    found: dict[str, tuple] = {}
    for key, text, fields, group, passage in rows:
        vector = ann.vectors_of(vectors, np.asarray([passage]))[0]
        old = found.get(key, (text, fields, group, ()))
        found[key] = (text, fields, group, old[3] + (vector,))
    return found


@pytest.mark.slow
def test_a_cli_bulk_load_killed_at_random_resumes_to_the_uninterrupted_result(tmp_path):
    import random
    import signal
    import subprocess
    import time

    from conftest import BERTDEX, ROOT
    from indexer.store.folder import open_manifest

    data = entries_file(tmp_path / "bulk.jsonl", 480, prefix="bulk")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    from indexer import build_index

    build_index(data, whole, checkpoint=40)  # the same model and options, in this process
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*BERTDEX, "index", str(killed), str(data), "--checkpoint", "40", "-q"], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:  # past the first checkpoint, then at random
        try:
            if open_manifest(killed).generation >= 1:
                break
        except Exception:  # not an index yet
            pass
        time.sleep(0.05)
    time.sleep(random.uniform(0, 0.5))
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL  # it was still loading
    interrupted = open_manifest(killed).documents
    assert 40 <= interrupted < 480
    assert run_cli("index", killed, data, "--checkpoint", "40", "-q").returncode == 0  # the same command resumes
    ours, theirs = stored_by_key(killed), stored_by_key(whole)
    assert len(ours) == 480 and ours.keys() == theirs.keys(), interrupted
    for key, (text, fields, group, vectors) in ours.items():
        assert (text, fields, group) == theirs[key][:3]
        assert len(vectors) == len(theirs[key][3])
        assert all(float(a @ b) > 0.9999 for a, b in zip(vectors, theirs[key][3])), key
    from indexer.store.verify import verify_index

    assert verify_index(killed).ok


@pytest.mark.slow
def test_http_and_cli_writes_serialize_and_lose_nothing(faq_index, encoder, tmp_path):
    """A CLI add holds the write lock while it embeds: HTTP writes meanwhile get 409; each one the
    server or the CLI said it committed is in the index afterwards, and verify passes."""
    import subprocess
    import threading
    import time

    from conftest import BERTDEX, ROOT
    from search.server.app import create_app
    from test_integrity import keys

    data = entries_file(tmp_path / "cli.jsonl", 120, prefix="cli")
    key = {"X-API-Key": "k" * 16}
    statuses: dict[str, int] = {}
    with running(create_app(faq_index, api_key="k" * 16, encoder=encoder)) as http:
        env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
        cli = subprocess.Popen([*BERTDEX, "add", str(faq_index), str(data), "-q"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = threading.Event()
        threading.Thread(target=lambda: (cli.wait(), done.set()), daemon=True).start()
        number = 0
        while not done.is_set() or number < 5:
            name = f"http-{number}"
            answer = http.post("/documents", headers=key,
                               json={"documents": [{"key": name, "text": f"Can I pay invoice {number} by card?"}]})
            statuses[name] = answer.status_code
            assert answer.status_code in (200, 409), answer.text
            number += 1
            time.sleep(0.05)
        err = cli.stderr.read()
    assert cli.returncode in (0, 5), err
    held = keys(faq_index)
    committed = [name for name, status in statuses.items() if status == 200]
    assert committed and all(name in held for name in committed)
    assert not any(name in held for name, status in statuses.items() if status == 409)
    cli_keys = [f"cli-{i}" for i in range(120)]
    assert all(k in held for k in cli_keys) if cli.returncode == 0 else not any(k in held for k in cli_keys)
    assert 409 in statuses.values() or cli.returncode == 5  # they met: one of them was told to wait
    from indexer.store.verify import verify_index

    assert verify_index(faq_index).ok

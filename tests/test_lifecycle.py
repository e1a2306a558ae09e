"""Index lifecycle: updates by key, deletes, locks, bad input, and crash safety under SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import EXAMPLES, ROOT, run_cli
from indexer import BertdexError, add_documents, build_index, delete_documents
from indexer.store.folder import IndexWriter, connect, open_manifest
from indexer.store.segments import files_of
from indexer.store.verify import verify_index
from search import Searcher

TOPICS = ["refund", "shipping", "password", "invoice", "coupon", "delivery", "account", "warranty"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def entries(start, stop, version=0):
    return [{"id": f"k{i}", "text": f"question {i} about {TOPICS[i % len(TOPICS)]} version {version}"}
            for i in range(start, stop)]


def state(folder) -> dict[str, str]:
    db = connect(folder, readonly=True)
    try:
        return dict(db.execute("SELECT key, text FROM documents").fetchall())
    finally:
        db.close()


def unnamed_files(folder) -> set[str]:
    """The vectors files in `folder` that its committed manifest does not name (what a crash leaves)."""
    named = files_of(open_manifest(folder))
    assert all((folder / name).is_file() for name in named)
    return {path.name for path in folder.iterdir() if path.name.startswith(("vectors.", "codes."))} - named


# -- updates ------------------------------------------------------------------------------------------


def test_add_appends_skips_unchanged_replaces_changed_and_delete_removes(tmp_path, resolved):
    folder = tmp_path / "index"
    build_index(write_jsonl(tmp_path / "a.jsonl", entries(0, 20)), folder, resolved=resolved)
    old_text = entries(0, 20)[3]["text"]
    before = Searcher(folder, encoder=resolved.encoder).search(old_text, k=1)[0]

    changed = entries(0, 20)
    changed[3]["text"] = "how do I cancel my subscription"
    report = add_documents(folder, write_jsonl(tmp_path / "b.jsonl", changed + entries(20, 25)),
                           encoder=resolved.encoder)
    assert (report.added, report.updated, report.unchanged, report.documents) == (5, 1, 19, 25)

    searcher = Searcher(folder, encoder=resolved.encoder)
    hit = searcher.search("how do I cancel my subscription", k=1)[0]
    assert hit.key == "k3" and hit.score > 0.99
    assert searcher.search(old_text, k=1)[0].key != "k3"
    assert before.key == "k3"

    again = add_documents(folder, tmp_path / "b.jsonl", encoder=resolved.encoder)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 25)

    removed, missing = delete_documents(folder, ["k3", "k4", "nope"])
    assert (removed, missing) == (2, ["nope"])
    assert set(state(folder)) == {f"k{i}" for i in range(25)} - {"k3", "k4"}
    assert all(hit.key not in ("k3", "k4") for hit in Searcher(folder, encoder=resolved.encoder).search("cancel subscription", k=23))
    assert verify_index(folder).ok and verify_index(folder).documents == 23


def test_verify_finds_a_broken_index(faq_index):
    db = connect(faq_index)
    db.execute("DELETE FROM passages WHERE id = (SELECT min(id) FROM passages)")
    db.close()
    report = verify_index(faq_index)
    assert not report.ok
    assert "49 passages but 50 FAISS vectors" in report.problems
    result = run_cli("verify", faq_index)
    assert result.returncode == 1 and "BROKEN" in result.stdout


def test_a_second_writer_is_told_who_holds_the_lock(faq_index):
    with IndexWriter.open(faq_index):
        with pytest.raises(BertdexError, match=f"locked by pid {os.getpid()}"):
            with IndexWriter.open(faq_index):
                pass
        result = run_cli("delete", faq_index, "en-001")
        assert result.returncode == 5  # IndexLocked
        assert f"locked by pid {os.getpid()}" in result.stderr
    assert run_cli("delete", faq_index, "en-001", check=True).stdout.strip() == "deleted 1 entry"


def test_long_documents_return_the_matching_window(tmp_path, resolved):
    filler = " ".join(f"paragraph {i} talks about warehouse logistics and pallet storage." for i in range(60))
    text = filler + " To return a damaged blender, print the prepaid label and drop it at any post office. " + filler
    data = write_jsonl(tmp_path / "docs.jsonl", [{"id": "manual", "text": text}, {"id": "other", "text": "hello"}])
    report = build_index(data, tmp_path / "index", resolved=resolved)
    assert report.vectors > 4 and report.split == report.vectors - 2
    hit = Searcher(tmp_path / "index", encoder=resolved.encoder).search("how to return a damaged blender", k=2)[0]
    assert hit.key == "manual"
    start, end = hit.span
    assert "damaged blender" in text[start:end] and end - start < len(text) / 3


# -- bad input ----------------------------------------------------------------------------------------


BAD_ROWS = [
    ("bad.jsonl", b'{"id": "1", "text": "fine"}\n{"id": "2", "text": "broken\n', 2, "invalid JSON"),
    ("bad.csv", b'id,text\n1,fine\n2,"unterminated\n', 3, "malformed CSV"),
    ("bad.csv", b'id,text\n1,fine\n2,a,b\n', 3, "3 columns where the header has 2"),
    ("bad.jsonl", b'{"id": "1", "text": "fine"}\n{"id": "2", "text": "\\u0000nul"}\n', 2, "NUL character"),
    ("bad.csv", b"id,text\n1,fine\n2,x\x00y\n", 3, "NUL"),
    ("bad.jsonl", b'{"id": "1", "text": "fine"}\n{"id": "2", "text": "   "}\n', 2, "empty text"),
    ("bad.jsonl", b'{"id": "1", "text": "fine"}\n{"id": "1", "text": "again"}\n', 2, "key '1' repeats line 1"),
    ("bad.jsonl", b'{"id": "1", "text": "fine"}\n{"id": "2", "body": "x"}\n', 2, "no 'text' field"),
    ("bad.jsonl", b'{"id": "1", "text": "fine"}\n{"id": "2", "text": "caf\xe9"}\n', 2, "not valid UTF-8"),
    ("bad.jsonl", b'{"id": "1", "text": "fine"}\n{"id": "2", "text": "' + b"x" * 1_048_576 + b'"}\n', 2, "limit is 1,000,000"),
]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, resolved):
    folder = tmp_path_factory.mktemp("small") / "index"
    build_index(write_jsonl(folder.parent / "small.jsonl", entries(0, 30)), folder, resolved=resolved)
    return folder


@pytest.mark.parametrize("name,content,line,reason", BAD_ROWS, ids=[r[3] for r in BAD_ROWS])
def test_bad_rows_are_refused_naming_file_and_line_and_lose_nothing(small_index, tmp_path, name, content, line, reason):
    data = tmp_path / name
    data.write_bytes(content)
    before = state(small_index)
    assert len(before) == 30
    with pytest.raises(BertdexError, match=f"{data.name}:{line}: .*{reason}"):
        add_documents(small_index, data)
    assert state(small_index) == before and verify_index(small_index).ok


def test_on_error_skip_indexes_the_good_rows_and_lists_the_bad(tmp_path, resolved):
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(b'{"id": "1", "text": "refund please"}\n{"id": "2", "text": ""}\nnot json\n'
                     b'{"id": "3", "text": "where is my parcel"}\n')
    report = build_index(data, tmp_path / "index", on_error="skip", resolved=resolved)
    assert report.documents == 2
    assert [str(p) for p in report.problems] == [f"{data}:2: empty text in 'text'",
                                                 f"{data}:3: invalid JSON: Expecting value at column 1"]


# -- crash safety -------------------------------------------------------------------------------------


class ForkServer:
    """tests/fault_writer.py: the model loaded once; each write runs in a child we can SIGKILL."""

    def __init__(self, *options: str):
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_writer.py"), *options],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.next_event()["event"] == "ready"

    def next_event(self) -> dict:
        line = self.process.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def run(self, request: dict, kill_after: float | None) -> bool:
        """Run one write, SIGKILL it after `kill_after` seconds; True if it reported its commit."""
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        events = [self.next_event()]
        while events[-1]["event"] != "start":
            events.append(self.next_event())
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(events[-1]["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        while events[-1]["event"] != "exit":
            events.append(self.next_event())
        assert not [e for e in events if e["event"] == "error"], events
        return any(e["event"] == "committed" for e in events)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def test_sigkill_at_random_moments_leaves_the_last_commit(tmp_path):
    rng = random.Random(20261129)
    folder = str(tmp_path / "index")
    base = write_jsonl(tmp_path / "base.jsonl", entries(0, 800))
    server = ForkServer()
    try:
        started = time.monotonic()
        assert server.run({"op": "build", "folder": folder, "data": str(base)}, None)
        build_seconds = time.monotonic() - started
        committed = {row["id"]: row["text"] for row in entries(0, 800)}
        assert state(folder) == committed

        kills = 0
        for attempt in range(24):
            if attempt % 2 == 0:  # a rebuild in place of the whole index
                rows = entries(0, 800, version=attempt)
                request = {"op": "build", "folder": folder, "data": str(write_jsonl(tmp_path / f"r{attempt}.jsonl", rows)),
                           "replace": True}
                after = {row["id"]: row["text"] for row in rows}
                window = build_seconds
            else:  # an update: 100 changed texts and 100 new keys
                rows = entries(100 * attempt % 1000, 100 * attempt % 1000 + 100, version=attempt) + \
                    entries(2000 + 100 * attempt, 2100 + 100 * attempt)
                request = {"op": "add", "folder": folder, "data": str(write_jsonl(tmp_path / f"u{attempt}.jsonl", rows))}
                after = {**committed, **{row["id"]: row["text"] for row in rows}}
                window = build_seconds / 5
            reported = server.run(request, kill_after=rng.uniform(0, window))
            found = state(folder)
            assert found in (committed, after), f"attempt {attempt}: a state that was never committed"
            if reported:
                assert found == after
            else:
                kills += 1
            committed = found
            report = verify_index(folder)
            assert report.ok, report.problems
            assert report.documents == len(committed)
            assert unnamed_files(tmp_path / "index") <= {f"vectors.{report.generation + 1}.partial",
                                                         f"vectors.{report.generation + 1}.faiss"}
        # most attempts must die mid-write; how many depends on the machine's load (20-23 quiet, 15 at load 13)
        assert kills >= 12
        hit = Searcher(folder).search(next(iter(committed.values())), k=1)[0]
        assert committed[hit.key] == hit.text
    finally:
        server.close()


@pytest.mark.slow
def test_sigkill_at_each_step_of_the_commit_leaves_the_pre_or_post_state(tmp_path):
    """Killed when the .partial file is written, after its rename, before and after SQLite's COMMIT."""
    folder = str(tmp_path / "index")
    server = ForkServer()
    try:
        assert server.run({"op": "build", "folder": folder, "data": str(write_jsonl(tmp_path / "b.jsonl", entries(0, 200)))}, None)
        committed = state(folder)
        for number, (step, op) in enumerate([(s, o) for s in ("partial", "renamed", "before-commit", "after-commit")
                                             for o in ("add", "build")]):
            rows = entries(0, 200, version=number + 1) if op == "build" else entries(150, 250, version=number + 1)
            data = str(write_jsonl(tmp_path / f"{step}-{op}.jsonl", rows))
            after = {row["id"]: row["text"] for row in rows} if op == "build" else {**committed, **{r["id"]: r["text"] for r in rows}}
            request = {"op": op, "folder": folder, "data": data, "replace": op == "build", "die_at": step}
            assert not server.run(request, None)  # it killed itself: no commit reported
            found = state(folder)
            assert found == (after if step == "after-commit" else committed), (step, op)
            report = verify_index(folder)
            assert report.ok and report.documents == len(found), (step, op, report.problems)
            assert Searcher(folder).search(next(iter(found.values())), k=1)[0].text in found.values()
            committed = found
        assert server.run({"op": "add", "folder": folder, "data": data}, None)  # the lock was not left held
        assert unnamed_files(tmp_path / "index") == set()
    finally:
        server.close()


def test_a_killed_first_build_can_be_run_again(tmp_path):
    folder = str(tmp_path / "fresh")
    data = write_jsonl(tmp_path / "base.jsonl", entries(0, 600))
    server = ForkServer()
    try:
        assert not server.run({"op": "build", "folder": folder, "data": str(data)}, kill_after=0.5)
        with pytest.raises(BertdexError, match="not a bertdex index"):
            Searcher(folder)
        assert server.run({"op": "build", "folder": folder, "data": str(data)}, None)
        assert len(state(folder)) == 600 and verify_index(folder).ok
    finally:
        server.close()


# -- concurrent readers -------------------------------------------------------------------------------


def test_readers_during_writes_see_whole_commits(tmp_path, resolved):
    folder = tmp_path / "index"
    build_index(write_jsonl(tmp_path / "v0.jsonl", entries(0, 40, version=0)), folder, resolved=resolved)
    errors, checks, stop = [], [], threading.Event()

    def reader():
        searcher = Searcher(folder, encoder=resolved.encoder)
        while not stop.is_set():
            try:
                hits = searcher.search("question about refund", k=10, mode="hybrid")
                versions = {hit.text.rsplit(" ", 1)[1] for hit in hits}
                checks.append(len(hits))
                if len(versions) != 1 or len(hits) != 10:
                    errors.append(f"torn result: {versions}, {len(hits)} hits")
            except Exception as error:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(error))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, 7):
            add_documents(folder, write_jsonl(tmp_path / f"v{version}.jsonl", entries(0, 40, version=version)),
                          encoder=resolved.encoder)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(checks) > 20
    assert verify_index(folder).ok

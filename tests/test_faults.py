"""The faults nothing tested before issue 25: a full disk during a commit, a CLI bulk load killed at
random, HTTP and CLI writes racing. (Stored HTML and scripts on the page: tests/test_browser.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from test_integrity import one_line_error
from test_server import running


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

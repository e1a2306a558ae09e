"""A read-only index folder: reads work (SQLite mode=ro / immutable=1), writes get one line, HTTP writes 503 JSON.

The commands run as another user (nobody, via setpriv) when the tests run as root, since root
writes through file permissions.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import BERTDEX, ROOT

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] if os.geteuid() == 0 else []


def as_reader(*args, env: dict | None = None):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.Popen([*NOBODY, *BERTDEX, *map(str, args)], cwd=ROOT, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(*args):
    process = as_reader(*args)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture
def read_only_index(faq_index_master):
    if NOBODY and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder read-only")
    parent = Path(tempfile.mkdtemp(prefix="bertdex-ro-"))
    folder = parent / "index"
    shutil.copytree(faq_index_master, folder, ignore=shutil.ignore_patterns("write.lock", "*-shm", "*-wal"))
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    parent.chmod(0o755)
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(parent)


@pytest.mark.slow
def test_a_read_only_folder_answers_reads_and_refuses_writes_in_one_line(read_only_index, tmp_path):
    folder = read_only_index
    code, out, err = run("query", folder, "I can't remember my password", "-k", "1", "--json")
    assert code == 0 and '"group": "g-password-reset"' in out and "Traceback" not in err, err
    code, out, err = run("verify", folder, "--texts", "0")
    assert code == 0 and out.startswith("ok: 50 entries"), err
    assert run("info", folder, "--json")[0] == 0
    for args in (("delete", folder, "en-001"), ("add", folder, ROOT / "examples" / "faq_en.csv")):
        code, out, err = run(*args)
        assert (code, err) == (6, f"error: index {folder} is read-only\n"), (args, err)
    assert sorted(p.name for p in folder.iterdir()) == ["bertdex.db", "vectors.1.faiss"]


@pytest.mark.slow
def test_http_writes_to_a_read_only_folder_answer_503_json(read_only_index, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = as_reader("serve", read_only_index, "--port", port, env={"BERTDEX_API_KEY": "k-123"})
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 240
    try:
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                if health.status_code == 200:
                    assert health.json()["writable"] is False  # it said true on a read-only folder
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "bertdex serve did not answer"
                time.sleep(0.3)
        response = httpx.post(f"{base}/documents", headers={"X-API-Key": "k-123"}, timeout=60,
                              json={"documents": [{"key": "ro-1", "text": "Is this folder writable?"}]})
        assert response.status_code == 503 and response.json() == {
            "error": f"index {read_only_index} is read-only", "status": 503}
        found = httpx.post(f"{base}/search", json={"question": "I can't remember my password", "k": 1}, timeout=60)
        assert found.status_code == 200 and found.json()["results"][0]["hits"][0]["group"] == "g-password-reset"
    finally:
        server.terminate()
        server.wait(timeout=30)

"""The exit-status table of docs/index-folder.md, row by row: each status the table lists is produced by
a real command here (8 and 9, a full disk and an I/O error, through the mapping the CLI applies),
and the table lists exactly the statuses the CLI knows (indexer.failures.EXIT_CODES)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BERTDEX, ROOT
from test_cli_errors import Driver

pytestmark = pytest.mark.slow  # one driver start (the imports), then a model load per query


def documented_statuses() -> list[int]:
    page = (ROOT / "docs" / "index-folder.md").read_text(encoding="utf-8")
    table = page[page.index("### Exit statuses"):].split("\n\n")[2]
    return [int(status) for status in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)]


def test_the_table_lists_the_statuses_the_cli_knows():
    from indexer.failures import EXIT_CODES

    assert documented_statuses() == [0, *sorted(EXIT_CODES)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130]


@pytest.fixture(scope="module")
def driven(faq_index_master, tmp_path_factory):
    index = tmp_path_factory.mktemp("exit") / "index"
    shutil.copytree(faq_index_master, index, ignore=shutil.ignore_patterns("write.lock"))
    driver = Driver(tmp_path_factory.mktemp("driver"))
    yield index, driver
    driver.close()


def run(driver, *argv, stdin: bytes | None = None) -> tuple[int, str, str]:
    return driver.run([str(arg).encode() for arg in argv], stdin)


def test_0_every_question_answered_and_every_key_found(driven):
    index, driver = driven
    code, out, err = run(driver, "query", index, "I forgot my password", "-k", "1", "--json")
    assert code == 0 and '"answered": true' in out, err
    assert run(driver, "get", index, "en-001")[0] == 0


def test_1_no_good_answer_and_no_such_key(driven):
    index, driver = driven
    off_topic = ("query", index, "What is the capital of Australia?", "--min-score", "0.5")
    code, out, err = run(driver, *off_topic)
    assert code == 1 and "no good answer: the closest entry" in out, (code, err)
    assert run(driver, *off_topic, "--no-fail")[0] == 0
    assert run(driver, "query", index, "refund", "--where", "category=Billing")[0] == 1  # the filter matched nothing
    code, _, err = run(driver, "get", index, "en-001", "nope")
    assert (code, err) == (1, "nope: not in the index\n")


@pytest.mark.parametrize("argv, stdin, words", [
    (["-k", "0"], None, "-k 0 is out of range"),
    (["--weight", "5"], None, "weight must be between 0 and 1"),
    (["--where", "categry=billing"], None, "no entry has a field 'categry'"),
    (["--fields", "key,nope"], None, "--fields 'nope'"),
    (["-"], b"\n", "stdin was empty"),
], ids=["k 0", "weight 5", "unknown filter field", "unknown column", "empty stdin"])
def test_2_usage(driven, argv, stdin, words):
    index, driver = driven
    question = [] if argv == ["-"] else ["refund"]
    code, out, err = run(driver, "query", index, *question, *argv, stdin=stdin)
    assert code == 2 and words in err and err.count("\n") == 1, (code, err)


def test_3_an_input_file_cannot_be_read(driven, tmp_path):
    index, driver = driven
    assert run(driver, "query", index, "--file", tmp_path / "missing.txt")[0] == 3


def test_4_no_index_there(driven, tmp_path):
    _, driver = driven
    assert run(driver, "query", tmp_path, "refund")[0] == 4


def test_5_locked_by_another_writer(faq_index, driven):
    from indexer.store.folder import IndexWriter

    _, driver = driven
    with IndexWriter.open(faq_index):
        code, _, err = run(driver, "delete", faq_index, "en-001")
    assert code == 5 and f"locked by pid {os.getpid()}" in err


def test_6_read_only(faq_index):
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] if os.geteuid() == 0 else []
    if nobody and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder read-only")
    for path in faq_index.iterdir():
        path.chmod(0o444)
    faq_index.chmod(0o555)
    os.chmod(faq_index.parent, 0o755)
    try:
        result = subprocess.run([*nobody, *BERTDEX, "delete", str(faq_index), "en-001"], capture_output=True, text=True,
                                cwd=ROOT, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        faq_index.chmod(0o755)
    assert result.returncode == 6 and "read-only" in result.stderr, result.stderr


def test_7_damaged(faq_index, driven):
    _, driver = driven
    (vectors,) = faq_index.glob("vectors.*.faiss")
    vectors.write_bytes(vectors.read_bytes()[: vectors.stat().st_size // 2])
    code, _, err = run(driver, "query", faq_index, "refund")
    assert code == 7 and err.startswith("error: "), err


@pytest.mark.parametrize("number, status", [(errno.ENOSPC, 8), (errno.EIO, 9)])
def test_8_and_9_full_disk_and_other_os_errors(number, status):
    """A full disk cannot be made here cheaply: the mapping every command's failure goes through."""
    from indexer.failures import explain

    message, code = explain(OSError(number, os.strerror(number), "runs/faq/vectors.2.faiss"))
    assert code == status and message.startswith("runs/faq/vectors.2.faiss: ")


def test_130_interrupted():
    """Ctrl-C while a command waits for stdin: one line, status 130, nothing committed."""
    # Ctrl-C as a terminal's foreground command gets it: a test run started in the background by a shell
    # inherits SIGINT ignored (and Python then leaves it ignored), so the command starts with it as default
    process = subprocess.Popen([*BERTDEX, "query", "runs/nowhere", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    waiting = f"/proc/{process.pid}/wchan"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until it blocks reading stdin (past the imports)
        try:
            if "pipe" in open(waiting).read():
                break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        time.sleep(5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    process.stdin.close()
    assert process.returncode == 130 and "interrupted" in err, (process.returncode, err)

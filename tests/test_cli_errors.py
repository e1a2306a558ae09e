"""Bad CLI input, a table of it: each case exits non-zero with one line on stderr, no traceback, index unchanged.

The cases are the classes a hostile user tried (gzip that is not, invalid UTF-8 in files, stdin
and arguments, lone surrogates, control characters in keys, zero-width texts, NaN and out-of-range
numbers, missing files and folders, usage errors) and the exit status each kind must get. Each runs
`cli.main()` in a child forked from tests/cli_driver.py (imports paid once), its stdio real files.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # one driver start (the imports, ~10-40 s on a busy machine), then ~0.5 s a case
from indexer.store.folder import connect, read_manifest
from indexer.store.integrity import file_digest


def truncated_gzip() -> bytes:
    whole = gzip.compress(b"id,question,group\n" + "".join(f"{i},question {i} about {i * 7919 % 1000},g\n"
                                                              for i in range(2000)).encode())
    return whole[: len(whole) // 2]


def files(tmp):
    """The input files the cases name, written once."""
    made = {
        "not-gzip.csv.gz": b"id,question\n1,hello\n",
        "truncated.csv.gz": truncated_gzip(),
        "latin1.csv": "id,question,group\n1,caf\xe9,g\n".encode("latin-1"),
        "zero-width.csv": "id,question,group\n1,\u200b\u200d\ufeff,g\n".encode(),
        "control-key.csv": b"id,question,group\na\x01b,hello,g\n",
        "questions-latin1.txt": "caf\xe9\n".encode("latin-1"),
        "big.csv": ("id,question,group\n1," + "\ufdfa" * 60_000 + ",g\n").encode(),
    }
    for name, content in made.items():
        (tmp / name).write_bytes(content)
    (tmp / "a-folder").mkdir()
    return tmp


# (name, argv after `bertdex` with {index}/{tmp} filled in, stdin bytes, exit status, words in the line)
CASES = [
    ("gzip that is not", ["add", "{index}", "{tmp}/not-gzip.csv.gz"], None, 3, "not a complete gzip file"),
    ("truncated gzip", ["add", "{index}", "{tmp}/truncated.csv.gz"], None, 3, "not a complete gzip file"),
    ("missing data file", ["add", "{index}", "{tmp}/nope.csv"], None, 3, "no such file"),
    ("data file is a folder", ["add", "{index}", "{tmp}/a-folder"], None, 3, "is a folder"),
    ("data not UTF-8", ["add", "{index}", "{tmp}/latin1.csv"], None, 3, "latin1.csv:2: not valid UTF-8"),
    ("zero-width text", ["add", "{index}", "{tmp}/zero-width.csv"], None, 1, "zero-width.csv:2: empty text"),
    ("control character in key", ["add", "{index}", "{tmp}/control-key.csv"], None, 1, "contains a control character"),
    ("text over the limit after NFKC", ["add", "{index}", "{tmp}/big.csv"], None, 1, "after normalization; the limit is 1,000,000"),
    ("unknown format", ["add", "{index}", "{tmp}/latin1.csv", "--format", "xml"], None, 2, "'xml' is not one of 'csv', 'tsv', 'jsonl', 'text'"),
    ("questions file missing", ["query", "{index}", "--file", "{tmp}/nope.txt"], None, 3, "no such file"),
    ("questions file is a folder", ["query", "{index}", "--file", "{tmp}/a-folder"], None, 3, "is a folder"),
    ("questions file not UTF-8", ["query", "{index}", "--file", "{tmp}/questions-latin1.txt"], None, 3, "questions-latin1.txt:1: not valid UTF-8"),
    ("stdin not UTF-8", ["query", "{index}", "-"], b"ok\ncaf\xe9\n", 3, "stdin:2: not valid UTF-8"),
    ("question not UTF-8", ["query", "{index}", b"caf\xe9"], None, 2, "not valid Unicode"),
    ("question of zero-width characters", ["query", "{index}", "\u200b\u200b"], None, 2, "empty question"),
    ("weight above 1", ["query", "{index}", "refund", "--mode", "hybrid", "--weight", "5"], None, 2, "weight must be between 0 and 1"),
    ("weight NaN", ["query", "{index}", "refund", "--weight", "nan"], None, 2, "weight must be between 0 and 1"),
    ("min score NaN", ["query", "{index}", "refund", "--min-score", "nan"], None, 2, "min score must be a number, not NaN"),
    ("k of 0", ["query", "{index}", "refund", "-k", "0"], None, 2, "-k 0 is out of range"),
    ("unknown mode", ["query", "{index}", "refund", "--mode", "psychic"], None, 2, "'psychic' is not one of 'dense', 'keyword', 'hybrid'"),
    ("where on a field no entry has", ["query", "{index}", "refund", "--where", "categry=billing"], None, 2, "no entry has a field 'categry'"),
    ("fields naming no column", ["query", "{index}", "refund", "--fields", "key,nope"], None, 2, "--fields 'nope'"),
    ("empty stdin", ["query", "{index}", "-"], b"\n", 2, "stdin was empty"),
    ("duplicates threshold out of range", ["duplicates", "{index}", "--threshold", "5"], None, 2, "--threshold 5.0 is out of range"),
    ("feedback threshold out of range", ["feedback", "{index}", "--threshold", "2"], None, 2, "must be in (0, 1]"),
    ("where without =", ["query", "{index}", "refund", "--where", "category"], None, 2, "use NAME=VALUE"),
    ("weight not a number", ["query", "{index}", "refund", "--weight", "abc"], None, 2, "'--weight'"),
    ("key not UTF-8", ["delete", "{index}", b"en-\xff"], None, 1, "not valid Unicode"),
    ("key with a control character", ["delete", "{index}", "en-\x01"], None, 1, "contains a control character"),
    ("key of zero-width characters", ["delete", "{index}", "\u200b"], None, 1, "the key is empty"),
    ("port too large", ["serve", "{index}", "--port", "99999"], None, 2, "'--port'"),
    ("port negative", ["serve", "{index}", "--port", "-5"], None, 2, "'--port'"),
    ("unknown on-error", ["index", "{tmp}/latin1.csv", "--index", "{tmp}/new", "--on-error", "shrug"], None, 2, "'shrug' is not one of 'fail', 'skip'"),
    ("index folder missing", ["verify", "{tmp}/nope"], None, 4, "does not exist"),
    ("index folder is a file", ["info", "{tmp}/latin1.csv"], None, 4, "is not a folder"),
    ("folder without an index", ["delete", "{tmp}/a-folder", "k"], None, 4, "not a bertdex index"),
    ("unknown command", ["frobnicate"], None, 2, "No such command"),
]


class Driver:
    """tests/cli_driver.py: runs `bertdex ARGV` in a forked child; returns (status, stdout, stderr)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_driver.py")], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"})

    def run(self, argv: list[bytes], stdin: bytes | None) -> tuple[int, str, str]:
        stdin_path = None
        if stdin is not None:
            stdin_path = self.tmp / "stdin"
            stdin_path.write_bytes(stdin)
        request = {"argv": [arg.hex() for arg in argv], "stdin": stdin_path and str(stdin_path),
                   "out": str(self.tmp / "out"), "err": str(self.tmp / "err")}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        status = json.loads(self.process.stdout.readline())["status"]
        read = lambda name: (self.tmp / name).read_bytes().decode("utf-8", "replace")  # noqa: E731
        return status, read("out"), read("err")

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def setting(faq_index_master, tmp_path_factory):
    tmp = files(tmp_path_factory.mktemp("bad-input"))
    index = tmp_path_factory.mktemp("fuzzed") / "index"
    shutil.copytree(faq_index_master, index, ignore=shutil.ignore_patterns("write.lock"))
    driver = Driver(tmp_path_factory.mktemp("driver"))
    yield tmp, index, driver
    driver.close()


def snapshot(index) -> tuple:
    db = connect(index, readonly=True)
    try:
        manifest = read_manifest(db, index)
        rows = db.execute("SELECT key, text, fields FROM documents ORDER BY key").fetchall()
    finally:
        db.close()
    faiss_files = sorted((p.name, file_digest(p)) for p in index.glob("vectors.*"))
    return manifest.generation, rows, faiss_files


def fill(arg, tmp, index) -> bytes:
    if isinstance(arg, bytes):
        return arg
    return arg.replace("{index}", str(index)).replace("{tmp}", str(tmp)).encode()


@pytest.mark.parametrize("name, argv, stdin, status, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_a_distinct_status_and_changes_nothing(setting, name, argv, stdin, status, words):
    tmp, index, driver = setting
    before = snapshot(index)
    code, out, err = driver.run([fill(arg, tmp, index) for arg in argv], stdin)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0], lines[0]
    assert code == status, (code, lines[0])
    assert snapshot(index) == before


def test_the_driver_runs_the_real_command(setting):
    """The table's harness is the CLI: a good command answers as `python cli.py` does."""
    tmp, index, driver = setting
    code, out, err = driver.run([b"verify", str(index).encode(), b"--texts", b"0"], None)
    assert (code, out.splitlines()[0]) == (0, "ok: 50 entries, 50 vectors, generation 1"), err

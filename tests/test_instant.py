"""The question path loads only what it uses: a saved ONNX Runtime choice answers without torch or transformers.

The choice is fed (a choice file written here, with figures), never taken from this CPU; the export and
the tokenizer are the real ones, and the answers are checked against the PyTorch path's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from indexer.embed import choose
from indexer.embed.encoder import Encoder
from indexer.embed.measure import Measurement
from indexer.embed.runners import RunPath
from indexer.embed.tokenizer import FastTokenizer, agrees_with

ONNX, TORCH, BF16 = RunPath("onnx", "fp32"), RunPath("torch", "fp32"), RunPath("torch", "bf16")
OPENVINO = RunPath("openvino", "fp32")  # fp32: OpenVINO runs it on every CPU (bf16 only where it says so)
# pydantic: typer 0.29 would build a pydantic adapter per option (~0.3 s of a cold question); cli.py converts plain
# values itself (tests/test_cli.py checks they come out as typer's own)
HEAVY = ("torch", "transformers", "onnx", "pydantic")
QUESTIONS = ["how long does a refund take?", "Can I change my delivery address after the order shipped?",
             "비밀번호를 잊어버렸어요", "password " * 200]

# A program that runs `bertdex ARGV...` for each argv given as JSON, in one process, then reports which of
# the heavy modules it imported (on stderr's last line).
RUN_COMMANDS = """
import json, sys
sys.path.insert(0, {root!r})
import cli
for argv in json.loads(sys.argv[1]):
    sys.argv = ["cli.py", *argv]
    code = cli.main()
    if code:
        sys.exit(code)
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def run_commands(commands: list[list[str]], home, modules: tuple[str, ...] = HEAVY) -> tuple[str, list[str]]:
    """(stdout, which of `modules` were imported) of the commands run in one new process with HOME=home."""
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", RUN_COMMANDS.format(root=str(ROOT), heavy=modules),
                             json.dumps(commands)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(result.stderr.strip().splitlines()[-1])


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def saved_home(resolved, tmp_path_factory):
    """A home whose bertdex cache holds the real ONNX export and a choice file fed these figures: questions on
    ONNX Runtime, bulk on PyTorch bf16 (the issue's AVX512-BF16 figures)."""
    home = tmp_path_factory.mktemp("home")
    cache = home / ".cache" / "bertdex" / "onnx"
    cache.mkdir(parents=True)
    folder, layer = resolved.encoder.folder, resolved.recipe.layer
    exported = Encoder(folder, keep_layers=layer, backend="onnx").runner.session.path
    link_export(exported, cache)
    write_choice(cache, resolved, bulk=BF16, question=ONNX, export=exported.name)
    return home


def link_export(graph: Path, folder: Path) -> None:
    """Links in `folder` to a cached export's graph and its weights (which it names beside it)."""
    from indexer.embed import onnx_model

    for path in onnx_model.export_files(graph):
        (folder / path.name).symlink_to(path)


def home_with_choice(home: Path, saved_home: Path, resolved, **paths) -> Path:
    """A home whose cache links saved_home's export and holds a choice file fed `paths` (bulk, question, once)."""
    cache = home / ".cache" / "bertdex" / "onnx"
    cache.mkdir(parents=True)
    exported = next((saved_home / ".cache" / "bertdex" / "onnx").glob("*.onnx"))
    link_export(exported, cache)
    write_choice(cache, resolved, export=exported.name, **paths)
    return home


def write_choice(cache, resolved, *, bulk, question, export, fast_tokenizer=None, once=None):
    figures = (Measurement(TORCH, 330, 16.0, 1.0, 1.0), Measurement(ONNX, 552, 4.5, 0.9999999, 1.0),
               Measurement(BF16, 1050, 15.8, 0.99992, 1.0))
    encoder = resolved.encoder
    agrees = choose._tokenizer_agrees(encoder) if fast_tokenizer is None else fast_tokenizer
    where = choose.choice_file(cache, resolved.recipe.model_checksum, resolved.recipe.layer, "auto", "auto",
                               choose.machine_key())
    choose._write_choice(where, choose.Saved(bulk, question, "fed figures", figures, export, agrees, once),
                         choose.machine_key())
    return where


def test_the_tokenizers_only_tokenizer_gives_transformers_tokens(encoder):
    texts = QUESTIONS + ["Café naïve  résumé ＡＢＣ", "", "e-mail@x.org 12,5%", "[CLS] literal [SEP] tokens"]
    fast = FastTokenizer(encoder.folder)
    assert agrees_with(fast, encoder.tokenizer, texts, encoder.max_length)
    assert fast.tokenize("Hello World") == encoder.tokenizer.tokenize("Hello World") == ["hello", "world"]
    assert fast("x")["input_ids"] == encoder.tokenizer("x")["input_ids"]
    # a tokenizer that differs is caught: a cased reading of an uncased vocabulary
    fast.backend.normalizer = None
    assert not agrees_with(fast, encoder.tokenizer, ["Hello World"], encoder.max_length)


@pytest.mark.slow
def test_a_saved_onnx_question_path_needs_no_torch_and_answers_as_pytorch(saved_home, resolved, faq_index_master):
    from search import Searcher

    asked = ["query", str(faq_index_master), *QUESTIONS, "-k", "3", "--json", "--no-fail"]  # one goes unanswered
    out, heavy = run_commands([asked], saved_home, HEAVY + ("sqlite_utils",))
    assert heavy == []  # sqlite_utils too: readers use sqlite3 (indexer.store.manifest.ReadOnlyDatabase)
    answers = [json.loads(line) for line in out.splitlines()]
    reference = Searcher(faq_index_master, backend="torch", precision="fp32")
    assert reference.encoder.path == TORCH
    for answer, expected in zip(answers, reference.search_many(QUESTIONS, 3)):
        assert [hit["key"] for hit in answer["hits"]] == [hit.key for hit in expected]
        assert np.allclose([hit["score"] for hit in answer["hits"]], [hit.score for hit in expected], atol=1e-4)


@pytest.mark.slow
def test_the_question_and_bulk_paths_come_from_the_same_choice_and_agree(saved_home, resolved):
    cache = saved_home / ".cache" / "bertdex" / "onnx"
    folder, layer = resolved.encoder.folder, resolved.recipe.layer
    question = Encoder(folder, keep_layers=layer, cache=cache, purpose="question")
    bulk = Encoder(folder, keep_layers=layer, cache=cache, purpose="bulk")
    assert (question.path, bulk.path) == (ONNX, BF16)
    assert isinstance(question.tokenizer, FastTokenizer) and question.model is None
    texts = QUESTIONS + ["where is my parcel?"]
    a, b = (e.embed(texts, layer=layer, pooling="mean", windows=True, stride=8).vectors for e in (question, bulk))
    fp32 = resolved.encoder.embed(texts, layer=layer, pooling="mean", windows=True, stride=8).vectors
    assert a.shape == b.shape == fp32.shape
    assert float(np.min(np.sum(a * fp32, axis=1))) >= 0.9999  # ONNX fp32 against fp32
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.999      # the two paths within the choice's tolerance


def test_without_a_checked_tokenizer_or_an_onnx_question_path_the_question_loads_pytorch(saved_home, resolved, tmp_path):
    folder, layer = resolved.encoder.folder, resolved.recipe.layer
    exported = next((saved_home / ".cache" / "bertdex" / "onnx").glob("*.onnx"))
    name = exported.name
    link_export(exported, tmp_path)
    write_choice(tmp_path, resolved, bulk=ONNX, question=ONNX, export=name, fast_tokenizer=False)
    assert choose.saved_question_path(folder, layer, precision="auto", backend="auto", cache=tmp_path, checksum=None,
                                      threads=None) is None
    unchecked = Encoder(folder, keep_layers=layer, cache=tmp_path, purpose="question")
    assert unchecked.path == ONNX and not isinstance(unchecked.tokenizer, FastTokenizer)
    write_choice(tmp_path, resolved, bulk=ONNX, question=TORCH, export=name)
    assert Encoder(folder, keep_layers=layer, cache=tmp_path, purpose="question").path == TORCH


def test_reading_an_index_imports_no_sqlite_utils_and_writing_still_migrates(saved_home, faq_index):
    out, heavy = run_commands([["info", str(faq_index), "--json"], ["verify", str(faq_index), "--texts", "0"]],
                              saved_home, HEAVY + ("sqlite_utils",))
    assert heavy == [] and json.loads(out.splitlines()[0])["documents"] == 50
    out, heavy = run_commands([["delete", str(faq_index), "en-002"], ["info", str(faq_index), "--json"]], saved_home,
                              ("sqlite_utils",))
    assert heavy == ["sqlite_utils"] and json.loads(out.splitlines()[-1])["documents"] == 49


def test_commands_that_touch_no_model_import_none_of_the_heavy_modules(saved_home, faq_index, tmp_path):
    out, heavy = run_commands([["info", str(faq_index), "--json"], ["verify", str(faq_index), "--texts", "0"],
                               ["models", "--json"], ["delete", str(faq_index), "en-001"]], saved_home)
    assert heavy == []
    info = json.loads(out.splitlines()[0])
    assert info["documents"] == 50 and info["warnings"] == []
    # the paths of this machine's saved choice, as fed (bulk bf16, questions ONNX Runtime); none measured yet: None
    assert info["paths_here"] == {"bulk": "torch bf16 (cpu)", "question": "onnx fp32 (cpu)", "once": "onnx fp32 (cpu)"}
    out, _ = run_commands([["info", str(faq_index), "--json"]], tmp_path)
    assert json.loads(out)["paths_here"] is None


@pytest.mark.slow
def test_serve_is_ready_when_it_says_so_without_torch(saved_home, faq_index, free_port):
    import httpx

    from search import Searcher

    env = {**os.environ, "HOME": str(saved_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", str(faq_index), "--port", str(free_port),
                                "--no-access-log", "--no-query-log"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert line.startswith("starting: ") and f":{free_port}/" in line
        maps = (Path("/proc") / str(process.pid) / "maps").read_text()
        assert "libtorch" not in maps and "onnxruntime" in maps  # the encoder is loaded, and on ONNX Runtime alone
        question = "how long does a refund take?"
        answer = httpx.post(f"http://127.0.0.1:{free_port}/search", json={"question": question, "k": 1}, timeout=30)
        expected = Searcher(faq_index, backend="torch").search(question, 1)[0]
        hit = answer.json()["results"][0]["hits"][0]
        assert (hit["key"], round(hit["score"], 4)) == (expected.key, round(expected.score, 4))
    finally:
        process.terminate()
        process.wait(timeout=30)


# A program that starts the question model early, as `bertdex query` does, makes a Searcher, and reports whether
# the early session was the one it took, and its answer.
EARLY = """
import json, sys
sys.path.insert(0, {root!r})
from search.early import start_question_model
from indexer.embed import onnx_model
started = start_question_model(sys.argv[1])
early = onnx_model._EARLY.pending()
from search import Searcher
searcher = Searcher(sys.argv[1], purpose="once")  # as `bertdex query` asks a few questions
hit = searcher.search(sys.argv[2], 1)[0]
taken = bool(early) and searcher.encoder.runner.session.session is early[0]
print(json.dumps({{"started": started, "taken": taken, "left": len(onnx_model._EARLY), "key": hit.key,
                  "score": hit.score}}))
"""


def run_early(index, home, question: str) -> dict:
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", EARLY.format(root=str(ROOT)), str(index), question],
                            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_query_takes_the_session_started_before_its_imports(saved_home, resolved, faq_index_master, tmp_path):
    from search import Searcher

    question = "how long does a refund take?"
    expected = Searcher(faq_index_master, backend="torch", precision="fp32").search(question, 1)[0]
    early = run_early(faq_index_master, saved_home, question)
    assert early == {"started": True, "taken": True, "left": 0, "key": expected.key, "score": early["score"]}
    assert abs(early["score"] - expected.score) < 1e-4
    # a machine whose question path is PyTorch starts nothing early, and answers the same
    home = home_with_choice(tmp_path / "home", saved_home, resolved, bulk=ONNX, question=TORCH)
    late = run_early(faq_index_master, home, question)
    assert (late["started"], late["taken"], late["key"]) == (False, False, expected.key)


@pytest.mark.slow
def test_a_server_asks_on_openvino_while_the_shell_starts_on_onnx_runtime(saved_home, resolved, faq_index_master,
                                                                          tmp_path):
    """A choice whose question path is OpenVINO and whose once path is ONNX Runtime (as measured on an AVX512-BF16
    EPYC, with fp32 here so that any CPU runs it): `query` imports neither torch nor openvino, a Searcher that
    stays loads OpenVINO without torch, and both answer as PyTorch fp32."""
    from search import Searcher

    home = home_with_choice(tmp_path / "home", saved_home, resolved, bulk=OPENVINO, question=OPENVINO, once=ONNX)
    asked = ["query", str(faq_index_master), *QUESTIONS[:3], "-k", "3", "--json", "--no-fail"]
    out, heavy = run_commands([asked], home, HEAVY + ("openvino",))
    assert heavy == []
    reference = Searcher(faq_index_master, backend="torch", precision="fp32").search_many(QUESTIONS[:3], 3)
    shell = [json.loads(line) for line in out.splitlines()]
    assert [[hit["key"] for hit in answer["hits"]] for answer in shell] == [[h.key for h in hits] for hits in reference]
    # a process that stays: OpenVINO, from the saved choice, with no torch (the tokenizer is `tokenizers` alone)
    staying = Encoder(resolved.encoder.folder, max_length=resolved.recipe.max_length, keep_layers=resolved.recipe.layer,
                      cache=home / ".cache" / "bertdex" / "onnx", purpose="question")
    assert staying.path == OPENVINO and staying.model is None and isinstance(staying.tokenizer, FastTokenizer)
    searcher = Searcher(faq_index_master, encoder=staying)
    for hits, expected in zip(searcher.search_many(QUESTIONS[:3], 3), reference):
        assert [h.key for h in hits] == [h.key for h in expected]
        assert np.allclose([h.score for h in hits], [h.score for h in expected], atol=1e-4)


# As EARLY, for a server's start: the question path's compilation (OpenVINO) begins before the imports.
EARLY_SERVER = """
import json, sys
sys.path.insert(0, {root!r})
from search.early import start_question_model
from indexer.embed import openvino_model
started = start_question_model(sys.argv[1], purpose="question")
early = openvino_model._EARLY.pending()
from search import Searcher
searcher = Searcher(sys.argv[1])
hit = searcher.search(sys.argv[2], 1)[0]
taken = bool(early) and early[0] is not None and searcher.encoder.runner.session.compiled is early[0]
print(json.dumps({{"started": started, "taken": taken, "left": len(openvino_model._EARLY), "key": hit.key,
                  "path": searcher.encoder.path.label()}}))
"""


@pytest.mark.slow
def test_a_server_compiles_its_openvino_question_model_before_its_imports(saved_home, resolved, faq_index_master,
                                                                         tmp_path):
    from search import Searcher

    home = home_with_choice(tmp_path / "home", saved_home, resolved, bulk=OPENVINO, question=OPENVINO, once=ONNX)
    question = "how long does a refund take?"
    expected = Searcher(faq_index_master, backend="torch", precision="fp32").search(question, 1)[0]
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", EARLY_SERVER.format(root=str(ROOT)), str(faq_index_master), question],
                            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"started": True, "taken": True, "left": 0, "key": expected.key, "path": "openvino fp32 (cpu)"}

"""Start loading an index's question model before anything else is loaded, for a question from the shell.

A cold `bertdex query` spends most of its time in two things: imports (numpy, faiss, onnxruntime, bertdex's
own modules) and making the ONNX Runtime session (reading and optimizing ~90 MB of weights for MiniLM).
ONNX Runtime makes a session without holding the GIL, so the two can overlap: `start_question_model`
reads what a Searcher would decide (the index's recipe, the model's folder and checksum, this machine's
saved question path) with light modules only, and starts the session on a thread; the Searcher made next
takes it (indexer.embed.onnx_model.start_session). Anything unusual (no saved ONNX Runtime question
path, a model given by name, a pair of models, an adapted model, a damaged index) starts nothing: the
Searcher then decides and reports as always. A session started and never taken costs its CPU only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def start_question_model(folder: str | Path, *, model: str | None = None, precision: str = "auto",
                         backend: str = "auto", threads: int | None = None) -> bool:
    """Start making the question session of index `folder` when this machine saved an ONNX Runtime path for
    a process that asks once (its `once` path) for its model; True when one was started. Never raises.

    (Kiwi, which a Korean question's keyword side loads, is not started here: it holds the GIL while it
    loads, ~1 s, so it would only take turns with the imports.)"""
    if model is not None or precision == "bf16" or backend == "torch":
        return False
    try:
        return _start(Path(folder), precision, backend, threads)
    except Exception:
        return False  # the Searcher decides and reports


def _manifest_value(folder: Path, name: str):
    from indexer.store.integrity import DB_NAME, connect_readonly

    conn = connect_readonly(folder / DB_NAME)
    try:
        row = conn.execute("SELECT value FROM manifest WHERE name = ?", [name]).fetchone()
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


def _start(folder: Path, precision: str, backend: str, threads: int | None) -> bool:
    from indexer.embed import onnx_model
    from indexer.embed.machine import choice_file, machine_key
    from indexer.embed.models import known_model, model_checksum, resolve_model_folder

    recipe = _manifest_value(folder, "recipe")
    name = recipe["model"]
    if recipe.get("companion") or (known_model(name) is None and not Path(name).expanduser().is_dir()):
        return False  # a pair, or an adapted or hub model: found by the Searcher (a hub name may download)
    model_folder = resolve_model_folder(name)
    checksum = model_checksum(model_folder)
    # (tokenizer.json, as indexer.embed.tokenizer.has_fast_tokenizer checks, without importing `tokenizers` yet)
    if checksum != recipe["model_checksum"] or not (model_folder / "tokenizer.json").is_file() \
            or not onnx_model.available():
        return False
    saved = json.loads(choice_file(onnx_model.DEFAULT_CACHE, checksum, recipe["layer"], precision, backend,
                                   machine_key()).read_text())
    once = saved.get("once") or {}  # the path of a process that asks once (indexer.embed.choose)
    if (once.get("backend"), once.get("precision")) != ("onnx", "fp32") or not saved.get("export") \
            or not saved.get("fast_tokenizer"):
        return False
    found = onnx_model.find_cached(onnx_model.DEFAULT_CACHE / saved["export"])
    if found is None:
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    onnx_model.start_session(found, threads or cores)
    return True

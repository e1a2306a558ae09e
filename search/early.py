"""Start loading an index's question model before anything else is loaded, for a question from the shell or
a server's start.

A cold `bertdex query` spends most of its time in two things: imports (numpy, faiss, onnxruntime, bertdex's
own modules) and making the ONNX Runtime session (reading and optimizing ~90 MB of weights for MiniLM).
ONNX Runtime makes a session, and OpenVINO compiles, without holding the GIL, so the two can overlap:
`start_question_model` reads what a Searcher would decide (the index's recipe, the model's folder and
checksum, this machine's saved path for the purpose: `once` for query, `question` for serve) with light
modules only, and starts the session or the compilation on a thread; the Searcher made next takes it
(indexer.embed.onnx_model.start_session, indexer.embed.openvino_model.start_compile). Anything unusual (no
saved ONNX Runtime or OpenVINO path, a model given by name, a pair of models, an adapted model, a damaged
index) starts nothing: the Searcher then decides and reports as always. A model started and never taken
costs its CPU only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def start_question_model(folder: str | Path, *, model: str | None = None, precision: str = "auto",
                         backend: str = "auto", threads: int | None = None, purpose: str = "once") -> bool:
    """Start making the question model of index `folder` when this machine saved an ONNX Runtime or OpenVINO
    path for `purpose` (once: `query`; question: `serve`) for its model; True when one was started. Never raises.

    (Kiwi, which a Korean question's keyword side loads, is not started here: it holds the GIL while it
    loads, ~1 s, so it would only take turns with the imports.)"""
    if model is not None or precision == "bf16" or backend == "torch":
        return False
    try:
        return _start(Path(folder), precision, backend, threads, purpose)
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


def _start(folder: Path, precision: str, backend: str, threads: int | None, purpose: str) -> bool:
    from indexer.embed import onnx_model, openvino_model
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
    path = saved.get(purpose) or {}  # the path saved for that purpose (indexer.embed.choose)
    known = {("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")}
    if (path.get("backend"), path.get("precision")) not in known or not saved.get("export") \
            or not saved.get("fast_tokenizer") or (path["backend"] == "openvino" and not openvino_model.available()):
        return False
    found = onnx_model.find_cached(onnx_model.DEFAULT_CACHE / saved["export"])
    if found is None:
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if path["backend"] == "onnx":
        onnx_model.start_session(found, threads or cores)
    else:
        openvino_model.start_compile(found, threads or cores, path["precision"])
    return True

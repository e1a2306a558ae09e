"""The encoder's fast path: a BERT model exported once to ONNX, cached on disk, run by ONNX Runtime.

Same fp32 weights and arithmetic as PyTorch (hidden states agree to ~2e-6), but one fused graph
(attention, LayerNorm, GELU) instead of ~150 eager operator calls: on the 2-core development machine
one question embeds in ~4-6 ms instead of ~16, and bulk encoding runs ~1.7x faster (bench/throughput.py).
An export is checked against PyTorch before it is cached, so a model ONNX Runtime computes wrongly is
never used. This module does not tokenize or pool: the Encoder does, for both paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.embed.early_start import Early

if TYPE_CHECKING:
    import numpy as np

# bump when the exported files change, so older cached ones are not reused. 2: the weights in a file beside the
# graph (`write_export`), which ONNX Runtime maps instead of parsing them out of the graph: a session in
# 0.07 s instead of 0.13 s for MiniLM, 0.1 s instead of 0.9 s for multilingual-e5-small (471 MB)
FORMAT = 2
DEFAULT_CACHE = Path.home() / ".cache" / "bertdex" / "onnx"
FALLBACK_CACHE = Path(tempfile.gettempdir()) / f"bertdex-onnx-{os.getuid()}"
TOLERANCE = 1e-3  # max |ONNX - PyTorch| over real tokens' hidden states accepted at export (seen: ~2e-6)


def available() -> bool:
    """True when onnxruntime (and onnx, for the export) are installed: found, not imported (onnx takes ~0.6 s)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def cached_path(cache: Path, checksum: str, layers: int, inputs: tuple[str, ...]) -> Path:
    """Where the export of this model's first `layers` layers lives.

    cached_path(Path("/c"), "ab12", 6, ("input_ids", "attention_mask")) -> /c/ab12-L6-i2-ort1.xx-f1.onnx
    """
    import onnxruntime

    version = ".".join(onnxruntime.__version__.split(".")[:2])
    return cache / f"{checksum}-L{layers}-i{len(inputs)}-ort{version}-f{FORMAT}.onnx"


def find_cached(path: Path) -> Path | None:
    """The cached export at `path`, or at its fallback in the temporary folder, if either exists."""
    for candidate in (path, FALLBACK_CACHE / path.name):
        if candidate.is_file():
            return candidate
    return None


class OnnxModel:
    """An ONNX Runtime session for one exported model; `run` returns the pooled layer's hidden states."""

    def __init__(self, path: Path, threads: int, spinning: bool | None = None):
        self.spinning = _SPINNING if spinning is None else spinning
        self.path, self.threads = path, threads
        self.session = _EARLY.take((str(Path(path).resolve()), threads, self.spinning)) \
            or _new_session(path, threads, self.spinning)
        self.inputs = tuple(item.name for item in self.session.get_inputs())

    def run(self, input_ids: np.ndarray, attention: np.ndarray, token_types: np.ndarray) -> np.ndarray:
        given = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types}
        return self.session.run(None, {name: given[name] for name in self.inputs})[0]

    def without_spinning(self) -> "OnnxModel":
        """This model in a session whose threads sleep between runs (itself if they already do)."""
        return self if not self.spinning else OnnxModel(self.path, self.threads, spinning=False)


def _new_session(path: Path, threads: int, spinning: bool):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# sessions made on a thread of their own (ONNX Runtime reads and optimizes the model without holding the GIL:
# ~0.15 s of CPU for MiniLM), for the OnnxModel of the same file, threads and spinning made later
_EARLY = Early("bertdex-early-session")


def start_session(path: Path, threads: int) -> None:
    """Begin making the session that OnnxModel(path, threads) will take, while the caller goes on (imports,
    opening an index). At most one early session a file and thread count; one never taken is dropped with
    the process."""
    import onnxruntime  # noqa: F401  here, not on the thread: two threads importing numpy at once can break it

    spinning = _SPINNING
    _EARLY.start((str(Path(path).resolve()), threads, spinning), lambda: _new_session(Path(path), threads, spinning))


# ONNX Runtime's threads spin for a while after each run, which makes the next run of the same session
# a little faster (one MiniLM question: 3.8 ms p50 against 4.1 without). Two sessions taking turns (a
# pair of models, indexer.embed.pair) fight each other's spinning threads: a pair's question took 23.1 ms
# with spinning, 12.1 without (`python bench/pair.py --spinning`). Sessions made inside `spinning(False)` sleep.
_SPINNING = True


@contextlib.contextmanager
def spinning(enabled: bool):
    global _SPINNING
    before, _SPINNING = _SPINNING, enabled
    try:
        yield
    finally:
        _SPINNING = before


def load_or_export(path: Path | None, source, *, inputs: tuple[str, ...], heads: int, hidden: int,
                   threads: int) -> OnnxModel:
    """The cached export for `path` (`find_cached`), or a new export, cached at `path`.

    `source()` -> (the truncated PyTorch model, a padded probe batch); it is called only when an export
    is needed (no cached file, or a damaged one), and may raise to refuse. `path` None: no cache. A new
    export must reproduce the model on the probe within TOLERANCE, else ValueError; it is written next to
    its final name and renamed, so readers never see half a file.
    """
    found = find_cached(path) if path is not None else None
    if found is not None:
        try:
            return OnnxModel(found, threads)
        except Exception:  # a damaged cache file (a crash mid-copy, a full disk): export again
            pass
    model, probe = source()
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / "plain.onnx"
        _export(model, plain, inputs)
        fused = Path(scratch) / "fused.onnx"
        candidates = [fused, plain] if _fuse(plain, fused, heads, hidden) else [plain]
        for candidate in candidates:
            session = OnnxModel(candidate, threads)
            if _agrees(session, model, probe):
                break
        else:
            raise ValueError("ONNX Runtime does not reproduce this model's hidden states")
        if path is None:
            return session  # the session holds the graph in memory; the file may go
        for folder in (path.parent, FALLBACK_CACHE):  # an unwritable home: the temporary folder
            target = folder / path.name
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_export(candidate, target)
            except OSError:
                continue
            session.path = target
            return session
        return session  # nowhere to write: the export serves this process only


def write_export(source: Path, target: Path) -> None:
    """The export `source` (one file) cached as the graph `target` and its weights beside it,
    `<target stem>.<hash of the weights>.data`: the weights first, then the graph, each put in place by a
    rename, so a reader that finds the graph finds its weights whole. Two processes exporting at once each
    point their graph at weights named by their content, never at the other's."""
    import onnx

    model = onnx.load(str(source))
    staging = target.parent / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        onnx.save_model(model, str(staging / "graph.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.data", size_threshold=1024)
        digest = hashlib.blake2b(digest_size=8)
        with open(staging / "weights.data", "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        weights = f"{target.stem}.{digest.hexdigest()}.data"
        for tensor in onnx.external_data_helper._get_all_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = weights
        onnx.save_model(model, str(staging / "graph.onnx"))  # the same graph, naming its weights' final file
        shutil.copymode(staging / "graph.onnx", staging / "weights.data")  # the umask's mode, not onnx's 0600
        os.replace(staging / "weights.data", target.parent / weights)
        os.replace(staging / "graph.onnx", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_files(path: Path) -> list[Path]:
    """The files of a cached export, its weights first and the graph last (the order to install them in)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    names = {entry.value for tensor in onnx.external_data_helper._get_all_tensors(graph)
             for entry in tensor.external_data if entry.key == "location"}
    return [path.parent / name for name in sorted(names)] + [path]


def _export(model, target: Path, inputs: tuple[str, ...]) -> None:
    """TorchScript-based export with eager attention: the graph ONNX Runtime's BERT fusions recognise."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(inputs, tensors))).last_hidden_state

    previous = getattr(model.config, "_attn_implementation", None)
    with contextlib.suppress(Exception):
        model.set_attn_implementation("eager")
    dummy = tuple(torch.ones(2, 16, dtype=torch.long) if name != "token_type_ids" else torch.zeros(2, 16, dtype=torch.long)
                  for name in inputs)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*inputs, "hidden")}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden(model).eval(), dummy, str(target), input_names=list(inputs),
                              output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
    finally:
        if previous is not None:
            with contextlib.suppress(Exception):
                model.set_attn_implementation(previous)


def _fuse(plain: Path, fused: Path, heads: int, hidden: int) -> bool:
    """ONNX Runtime's BERT graph fusions (attention, skip-LayerNorm, bias-GELU); False if they do not apply."""
    try:
        from onnxruntime.transformers import optimizer

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            optimized = optimizer.optimize_model(str(plain), model_type="bert", num_heads=heads, hidden_size=hidden)
            optimized.save_model_to_file(str(fused))
    except Exception:
        return False
    return fused.is_file()


def _agrees(session: OnnxModel, model, probe: dict[str, np.ndarray]) -> bool:
    import numpy as np
    import torch

    with torch.inference_mode():
        expected = model(**{name: torch.from_numpy(probe[name]) for name in session.inputs}).last_hidden_state.numpy()
    got = session.run(probe["input_ids"], probe["attention_mask"], probe["token_type_ids"])
    real = probe["attention_mask"].astype(bool)
    return got.shape == expected.shape and float(np.abs(got[real] - expected[real]).max()) <= TOLERANCE

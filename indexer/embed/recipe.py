"""The embedding recipe: everything that decides a text's vector, frozen and saved in the manifest.

Two indexes, or an index and a query, are compatible exactly when their recipes are equal.
A recipe may carry a companion: a second model's recipe whose unit vector is joined to the first's
(`joined`), so one inner product scores a weighted sum of both models' cosines.
This module knows nothing about torch; it only describes and validates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

POOLINGS = ("mean", "max", "cls", "mean-max")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """How a text becomes a vector.

    `layer` is an index into the model's hidden states (0 = embeddings output, 1..L the
    transformer layers), stored non-negative so that "-1" and "6" on a 6-layer model compare equal.
    """

    model: str
    model_checksum: str
    lowercase: bool
    layer: int
    pooling: str
    exclude_special: bool
    max_length: int
    dimension: int
    query_prefix: str = ""    # put before each question ("query: " for e5 models)
    passage_prefix: str = ""  # put before each stored text ("passage: " for e5 models)
    # a second model embedding the same windows; its cosine counts `companion_share`, this one's the rest
    # (`dimension` is then both models' together: the stored vectors are `joined`)
    companion: "Recipe | None" = None
    companion_share: float = 0.0
    # a learned map (indexer.embed.projection) applied to this layer and pooling before normalising: its name
    projection: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        values = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if isinstance(values.get("companion"), dict):
            values["companion"] = cls.from_dict(values["companion"])
        return cls(**values)

    def alone(self) -> "Recipe":
        """This recipe without its companion: the first model's own vectors."""
        if self.companion is None:
            return self
        return replace(self, companion=None, companion_share=0.0, dimension=self.dimension - self.companion.dimension)

    def with_companion(self, companion: "Recipe", share: float) -> "Recipe":
        from indexer.errors import BertdexError

        if not 0 < share < 1:
            raise BertdexError(f"--companion-share {share} must be between 0 and 1 (the companion model's part of the score)")
        if companion.companion is not None:
            raise BertdexError("a companion model cannot have a companion of its own")
        alone = self.alone()
        return replace(alone, companion=companion, companion_share=round(float(share), 6),
                       dimension=alone.dimension + companion.dimension)

    def describe(self) -> str:
        """'all-MiniLM-L6-v2' or '0.5 x all-MiniLM-L6-v2 + 0.5 x multilingual-e5-small' (the score's parts)."""
        if self.companion is None:
            return self.model
        own = 1 - self.companion_share
        return f"{own:.2g} x {self.model} + {self.companion_share:.2g} x {self.companion.model}"

    def differences(self, other: "Recipe") -> list[str]:
        """Names and values that differ, e.g. ['layer: 5 != 6']."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{name}: {mine[name]!r} != {theirs[name]!r}" for name in mine if mine[name] != theirs[name]]


def check_pooling(pooling: str) -> str:
    from indexer.errors import BertdexError

    if pooling not in POOLINGS:
        raise BertdexError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    return pooling


def absolute_layer(layer: int, num_layers: int) -> int:
    """hidden_states index for `layer` on a model with `num_layers` transformer layers.

    absolute_layer(-1, 6) -> 6, absolute_layer(-2, 6) -> 5, absolute_layer(0, 6) -> 0
    """
    from indexer.errors import BertdexError

    index = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= index <= num_layers:
        raise BertdexError(
            f"--layer {layer} is out of range: this model has hidden states 0..{num_layers} "
            f"(or -1..-{num_layers + 1} from the top)"
        )
    return index


def joined(own: np.ndarray, other: np.ndarray, share: float) -> np.ndarray:
    """Rows [sqrt(1 - share) x own, sqrt(share) x other]: unit vectors when both are, and the inner
    product of two such rows is (1 - share) x own cosine + share x other cosine.

    joined([[1, 0]], [[0, 1]], 0.36) -> [[0.8, 0, 0, 0.6]]
    """
    own, other = np.asarray(own, dtype=np.float32), np.asarray(other, dtype=np.float32)
    return np.hstack([own * np.float32(np.sqrt(1 - share)), other * np.float32(np.sqrt(share))])

"""The embedding recipe: everything that decides a text's vector, frozen and saved in the manifest.

Two indexes, or an index and a query, are compatible exactly when their recipes are equal.
This module knows nothing about torch; it only describes and validates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

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

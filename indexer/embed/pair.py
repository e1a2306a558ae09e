"""Two models answering together: an encoder whose vectors are one model's joined to a companion's.

The first model cuts the windows (its tokenizer, the index's window settings); the companion embeds
the characters of each of those windows, with its own prefix for the text's role ("query: " or
"passage: " for e5), layer and pooling. The two unit vectors are joined (`recipe.joined`), so the
writer, FAISS, verify and repair see one vector per window, and an inner product scores
(1 - share) x the first model's cosine + share x the companion's. This module does not choose the
share (search.quality.tune measures it) and holds no arithmetic of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.embed.recipe import Recipe, joined

ROLES = ("passage", "query")


@dataclass(frozen=True)
class PairPath:
    """Both models' run paths, named together in the manifest's encoded_with."""

    own: object
    companion: object

    def label(self) -> str:
        return f"{self.own.label()} + companion {self.companion.label()}"


class PairEncoder:
    """`own` (an Encoder for recipe.alone()) and `companion` (one for recipe.companion), answering as one.

    Everything but `embed` is the first model's (tokenizer, window length, layers kept), so callers that
    tokenize or cut long questions do it as they would for that model alone.
    """

    def __init__(self, own, companion, recipe: Recipe):
        self.own, self.companion, self.recipe = own, companion, recipe
        for encoder in (own, companion):  # two sessions taking turns: their threads must not spin (onnx_model)
            runner = getattr(encoder, "runner", None)
            if hasattr(getattr(runner, "session", None), "without_spinning"):
                runner.session = runner.session.without_spinning()

    def __getattr__(self, name):  # what this class does not define is the first model's
        if name.startswith("__") or "own" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.own, name)

    @property
    def path(self) -> PairPath:
        return PairPath(self.own.path, self.companion.path)

    def embed(self, texts: list[str], *, layer: int, pooling: str, exclude_special: bool = False,
              windows: bool = False, stride: int = 0, window_length: int | None = None, prefix: str = "",
              role: str = "passage"):
        """The first model's windows and vectors, each joined to the companion's vector of the same characters."""
        from indexer.embed.encoder import Embedded

        mine = self.own.embed(texts, layer=layer, pooling=pooling, exclude_special=exclude_special, windows=windows,
                              stride=stride, window_length=window_length, prefix=prefix)
        theirs = companion_vectors(self.companion, self.recipe.companion, texts, mine.owners, mine.spans, role)
        return Embedded(joined(mine.vectors, theirs, self.recipe.companion_share), mine.owners, mine.spans,
                        mine.truncated)


def companion_vectors(encoder, other: Recipe, texts, owners: np.ndarray, spans: np.ndarray, role: str) -> np.ndarray:
    """The companion's (recipe `other`, `encoder`) vector of each window's characters (texts[owner][start:end]),
    one row per window. `texts`: a list, or a dict by owner.

    A window the companion cannot read whole (its own length limit) is cut at that limit.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {ROLES}")
    pieces = [texts[owner][start:end] for owner, (start, end) in zip(owners.tolist(), spans.tolist())]
    prefix = other.query_prefix if role == "query" else other.passage_prefix
    return encoder.embed(pieces, layer=other.layer, pooling=other.pooling, exclude_special=other.exclude_special,
                         prefix=prefix).vectors

"""How entries and questions become vectors under an index's recipe and settings: the one embedding path.

Building, adding, re-embedding and tuning all call `embed_entries`, so an entry is cut into the same
windows (window on/off, window_length, stride) whichever of them embeds it; the searcher and the
tuner both call `embed_questions`. A question longer than the model's window is embedded by windows
like an entry ("windows", scored later by its best window), or keeps its last tokens ("tail": in a
pasted conversation or a long email the question comes last). This module does not store or search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.embed.recipe import POOLINGS, Recipe
from indexer.errors import BertdexError
from indexer.store.keywords import normalize_text
from indexer.store.settings import LONG_QUESTIONS, IndexSettings


@dataclass(frozen=True)
class Vectors:
    """L2-normalized vectors per (layer, pooling); owners[i] is the text row i belongs to, spans[i] its characters."""

    by_recipe: dict
    owners: np.ndarray
    spans: np.ndarray
    truncated: int = 0

    def of(self, layer: int, pooling: str) -> np.ndarray:
        return self.by_recipe[(layer, pooling)]


def embed_entries(encoder, recipe: Recipe, settings: IndexSettings, texts: list[str], *,
                  layers: list[int] | None = None, role: str = "passage") -> Vectors:
    """Entries' vectors, windowed as `settings` say: the recipe's layer and pooling, or every pooling of `layers`.

    `role`: "passage" (the recipe's passage prefix) or "query" (its query prefix; embed_questions).
    A recipe with a companion model needs its paired encoder (`encoder_for`) and gives its own layer only.
    """
    if encoder.max_length != recipe.max_length:
        raise BertdexError(f"this encoder reads {encoder.max_length} tokens, the index's recipe {recipe.max_length}: "
                           "make it with max_length=recipe.max_length")
    options = dict(exclude_special=recipe.exclude_special, windows=settings.window, stride=settings.stride,
                   window_length=settings.window_length,
                   prefix=recipe.query_prefix if role == "query" else recipe.passage_prefix)
    paired = getattr(encoder, "recipe", None)
    if (recipe.companion is not None) != (paired is not None) or (paired is not None and paired != recipe):
        raise BertdexError(f"this encoder embeds by {paired.describe() if paired else encoder.folder.name}, "
                           f"the recipe by {recipe.describe()}: make it with encoder_for(recipe)")
    if layers is None:
        embedded = encoder.embed(texts, layer=recipe.layer, pooling=recipe.pooling, role=role, **options)
        return Vectors({(recipe.layer, recipe.pooling): embedded.vectors}, embedded.owners, embedded.spans,
                       embedded.truncated)
    if recipe.companion is not None:
        raise BertdexError("a recipe with a companion model has one layer and pooling: embed it with layers=None")
    vectors, owners, spans = encoder.embed_layers(texts, layers=list(layers), poolings=POOLINGS, **options)
    return Vectors(vectors, owners, spans)


def embed_questions(encoder, recipe: Recipe, settings: IndexSettings, questions: list[str], *,
                    layers: list[int] | None = None, long_questions: str | None = None) -> Vectors:
    """Questions' vectors (normalized text first); owners map window rows to questions when long ones are windowed.

    `long_questions`: "tail" or "windows" (default: the index's search setting).
    """
    how = long_questions or settings.search.long_questions
    texts = question_texts(encoder, settings, questions, how)
    windowed = IndexSettings(window=how == "windows", window_length=settings.window_length, stride=settings.stride)
    return embed_entries(encoder, recipe, windowed, texts, layers=layers, role="query")


def question_texts(encoder, settings: IndexSettings, questions: list[str], long_questions: str | None = None) -> list[str]:
    """The texts embed_questions embeds: normalized, and cut to their last tokens where long ones keep their "tail"
    (the spans of its Vectors are in these texts' characters)."""
    how = long_questions or settings.search.long_questions
    if how not in LONG_QUESTIONS:
        raise BertdexError(f"unknown --long-questions {how!r}: choose one of {', '.join(LONG_QUESTIONS)}")
    texts = [normalize_text(q) for q in questions]
    return tail_texts(encoder, texts) if how == "tail" else texts


def tail_texts(encoder, texts: list[str]) -> list[str]:
    """Each text cut to its last tokens where it is longer than the encoder's window (others unchanged).

    A token covers at least one character and a character at most 3 tokens (Hangul split into jamo),
    so texts under a third of the window in characters are not tokenized here.
    """
    room = encoder.max_length - 2  # [CLS] and [SEP]
    long = [i for i, text in enumerate(texts) if len(text) * 3 > room]
    if not long:
        return texts
    encoded = encoder.tokenizer([texts[i] for i in long], add_special_tokens=False, return_offsets_mapping=True,
                                truncation=False)
    texts = list(texts)
    for i, offsets in zip(long, encoded["offset_mapping"]):
        real = [start for start, end in offsets if end > start]
        if len(real) > room:
            texts[i] = texts[i][real[-room]:]
    return texts

"""Embed the shipped off-topic sample by an index's recipe and keep it in the index, so every commit can
make the "no good answer" cut from the collection (indexer.store.offtopic).

The sample is everyday questions no help desk answers, written for bertdex (indexer/ingest/offtopic_en.txt
and offtopic_ko.txt, ~100 each; never examples/out_of_scope.txt, which is what the cut is tested on).
The language is the entries': Korean when at least NON_ENGLISH_SHARE of them have Hangul, else English.
Vectors are embedded once per recipe and process (an in-memory cache) and once per recipe per index (the
stored row). This module does not choose the cut.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from indexer.embed.models import LANGUAGE_SAMPLE, NON_ENGLISH_SHARE, share_of
from indexer.ingest.embedding import embed_questions
from indexer.store.keywords import hangul_syllable
from indexer.store.offtopic import sample_of, store_sample

SAMPLE_FOLDER = Path(__file__).resolve().parent
LANGUAGES = ("en", "ko")
_cache: dict[tuple[str, str], np.ndarray] = {}
_cache_lock = threading.Lock()


def sample_questions(language: str) -> list[str]:
    """The shipped off-topic questions of `language` (en or ko), comments and blank lines left out."""
    lines = (SAMPLE_FOLDER / f"offtopic_{language}.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def sample_language(texts) -> str:
    """ko when at least NON_ENGLISH_SHARE of `texts` have Hangul, else en: sample_language(["환불 문의"]) -> 'ko'."""
    share = share_of(list(texts)[:LANGUAGE_SAMPLE], hangul_syllable) or 0.0
    return "ko" if share >= NON_ENGLISH_SHARE else "en"


def sample_vectors(encoder, recipe, settings, language: str) -> np.ndarray:
    """The sample's question vectors by `recipe` (one per question: the sample's questions are short)."""
    key = (json.dumps(recipe.to_dict(), sort_keys=True), language)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    embedded = embed_questions(encoder, recipe, settings, sample_questions(language), long_questions="tail")
    vectors = np.ascontiguousarray(embedded.of(recipe.layer, recipe.pooling), dtype=np.float32)
    with _cache_lock:
        _cache[key] = vectors
    return vectors


def ensure_sample(writer, encoder, texts=None) -> None:
    """Store the sample by the writer's recipe in its transaction, unless it is there already.

    `texts`: the entries to tell the language by (default: the stored sample's language, else the index's
    first entries).
    """
    recipe = writer.manifest.recipe
    if texts is None and sample_of(writer.db, recipe) is not None:
        return
    if texts is not None:
        language = sample_language(texts)
    else:
        row = writer.db.execute("SELECT language FROM offtopic_sample LIMIT 1").fetchone()
        stored = [r[0] for r in writer.db.execute("SELECT text FROM documents ORDER BY id LIMIT ?", [LANGUAGE_SAMPLE])]
        language = row[0] if row and row[0] in LANGUAGES else sample_language(stored)
    found = sample_of(writer.db, recipe)
    if found is not None and found[1] == language:
        return
    store_sample(writer.db, recipe, language, sample_vectors(encoder, recipe, writer.manifest.settings, language))

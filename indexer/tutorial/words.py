"""Vectors out of hidden states: one per word in its context, one per sentence, and saving them.

A word's vector is built from its tokens' hidden states by a strategy (the tutorial's four:
concatenate or sum the last four layers, the last layer, the second-to-last), and a word cut into
pieces (WordPiece 임 ##베 ##딩, SentencePiece ▁임 베 딩) is merged back into one vector (mean, first or
last piece); which pieces make a word comes from the tokenizer's word_ids(), not from "##" or "▁". Sentence vectors follow an
index's recipe or a chosen one, through `Encoder.embed` as indexing does. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError
from indexer.store.keywords import normalize_text
from indexer.embed.models import default_model
from indexer.embed.recipe import Recipe
from indexer.tutorial.tokens import char_span, hidden_states_of

STRATEGIES = ("concat-last4", "sum-last4", "last", "second-last")
MERGES = ("mean", "first", "last")


def token_vectors(states: np.ndarray, strategy: str) -> np.ndarray:
    """[layers+1, tokens, hidden] -> [tokens, features].

    concat-last4: the last four layers side by side, last first (4 x hidden), as the tutorial's
    torch.cat((token[-1], token[-2], token[-3], token[-4])); sum-last4: their sum; last; second-last.
    """
    if strategy not in STRATEGIES:
        raise BertdexError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy.endswith("last4") and states.shape[0] < 5:
        raise BertdexError(f"{strategy} needs a model with at least 4 layers; this one has {states.shape[0] - 1}")
    if strategy == "concat-last4":
        return np.concatenate([states[-1], states[-2], states[-3], states[-4]], axis=-1)
    if strategy == "sum-last4":
        return states[-4:].sum(axis=0)
    return states[-1] if strategy == "last" else states[-2]


def merge_pieces(vectors: np.ndarray, groups: list[list[int]], merge: str) -> np.ndarray:
    """One row per group of token rows.

    merge_pieces([[1, 1], [3, 3], [5, 5]], [[0, 1], [2]], "mean") -> [[2, 2], [5, 5]]
    """
    if merge not in MERGES:
        raise BertdexError(f"unknown merge {merge!r}: choose one of {', '.join(MERGES)}")
    vectors = np.asarray(vectors, dtype=np.float32)
    pick = {"mean": lambda rows: rows.mean(axis=0), "first": lambda rows: rows[0], "last": lambda rows: rows[-1]}[merge]
    return np.stack([pick(vectors[group]) for group in groups]) if groups else np.zeros((0, vectors.shape[-1]), np.float32)


@dataclass(frozen=True)
class Word:
    """A word of the text, as the model's pre-tokenizer splits words: BERT's at whitespace and punctuation,
    SentencePiece's (Metaspace) at whitespace only, so "나갔다." keeps its full stop there."""

    text: str
    start: int
    end: int
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class WordVectors:
    text: str
    words: tuple[Word, ...]
    vectors: np.ndarray  # [words, features]
    strategy: str
    merge: str
    truncated: bool

    def labels(self) -> list[dict]:
        return [{"word": w.text, "start": w.start, "end": w.end, "pieces": list(w.pieces)} for w in self.words]


def word_vectors(encoder: Encoder, text: str, *, strategy: str = "sum-last4", merge: str = "mean") -> WordVectors:
    """One contextual vector per word of `text`; a word's pieces (임 ##베 ##딩, or ▁임 베 딩) are merged
    into one. A lone "▁" piece (SentencePiece's word start, spelled apart) is one of its word's pieces."""
    states, encoded = hidden_states_of(encoder, text)
    rows = token_vectors(states, strategy)
    groups: dict[int, list[int]] = {}
    for position, word in enumerate(encoded.word_ids(0)):
        if word is not None:
            groups.setdefault(word, []).append(position)
    offsets = [char_span(text, start, end) for start, end in encoded["offset_mapping"][0].tolist()]
    pieces = encoder.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    words = tuple(
        Word(text[offsets[g[0]][0]:offsets[g[-1]][1]], offsets[g[0]][0], offsets[g[-1]][1], tuple(pieces[i] for i in g))
        for g in groups.values()
    )
    truncated = len(encoder.tokenizer(text, verbose=False)["input_ids"]) > encoder.max_length
    return WordVectors(text, words, merge_pieces(rows, list(groups.values()), merge), strategy, merge, truncated)


# -- one word across sentences ------------------------------------------------------------------


def find_word(sentence: str, word: str) -> tuple[int, int]:
    """Characters of `word` in `sentence`: a whole whitespace token first, then a token it starts
    (Korean 배 in 배를, glued to its particle), then anywhere.

    find_word("강 위의 배를 보았다", "배") -> (5, 6)
    """
    if not word.strip() or word != word.strip():
        raise BertdexError(f"--word {word!r}: give one word, without spaces around it")
    spans, position = [], 0
    for part in sentence.split():
        position = sentence.index(part, position)
        spans.append((position, part))
        position += len(part)
    for accept in (lambda part: part == word, lambda part: part.startswith(word)):
        for start, part in spans:
            if accept(part):
                return start, start + len(word)
    start = sentence.find(word)
    if start < 0:
        raise BertdexError(f"the word {word!r} is not in the sentence {sentence!r}")
    return start, start + len(word)


@dataclass(frozen=True)
class WordInContext:
    sentence: str
    start: int
    end: int
    pieces: tuple[str, ...]  # the tokens whose characters overlap the word's


@dataclass(frozen=True)
class WordSimilarity:
    word: str
    occurrences: tuple[WordInContext, ...]
    vectors: np.ndarray  # [sentences, features]
    matrix: np.ndarray  # [sentences, sentences] cosine similarity
    strategy: str
    merge: str

    def to_dict(self) -> dict:
        return {"word": self.word, "strategy": self.strategy, "merge": self.merge,
                "occurrences": [{"sentence": o.sentence, "start": o.start, "end": o.end, "pieces": list(o.pieces)}
                                for o in self.occurrences],
                "matrix": np.round(self.matrix.astype(np.float64), 6).tolist()}


def similar_word(encoder: Encoder, sentences: list[str], word: str, *, strategy: str = "sum-last4",
                 merge: str = "mean") -> WordSimilarity:
    """Cosine similarity of `word`'s contextual vectors across `sentences` (its first place in each).

    The word's tokens are those whose character spans overlap the word's, so 배 in 배를 is found
    whether the tokenizer splits off the particle (배 ##를, ▁배 를) or not.
    """
    if len(sentences) < 2:
        raise BertdexError("give at least two sentences to compare the word across")
    occurrences, vectors = [], []
    for sentence in sentences:
        start, end = find_word(sentence, word)
        states, encoded = hidden_states_of(encoder, sentence)
        rows = token_vectors(states, strategy)
        spans = [char_span(sentence, s, e) for s, e in encoded["offset_mapping"][0].tolist()]
        chosen = [i for i, (w, (s, e)) in enumerate(zip(encoded.word_ids(0), spans))
                  if w is not None and s < end and e > start]
        if not chosen:
            raise BertdexError(f"the word {word!r} lies past the model's window of {encoder.max_length} tokens "
                               f"in {sentence!r}")
        pieces = encoder.tokenizer.convert_ids_to_tokens([int(encoded["input_ids"][0, i]) for i in chosen])
        occurrences.append(WordInContext(sentence, start, end, tuple(pieces)))
        vectors.append(merge_pieces(rows, [chosen], merge)[0])
    matrix = np.stack(vectors)
    unit = matrix / np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)
    return WordSimilarity(word, tuple(occurrences), matrix, np.clip(unit @ unit.T, -1.0, 1.0), strategy, merge)


# -- sentence vectors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceVectors:
    texts: tuple[str, ...]
    vectors: np.ndarray  # [texts, dimension], L2-normalized
    recipe: Recipe
    truncated: int
    reason: str

    def labels(self) -> list[dict]:
        return [{"text": text} for text in self.texts]


def sentence_vectors(texts: list[str], *, index: str | Path | None = None, model: str | None = None,
                     layer: int | None = None, pooling: str | None = None, precision: str = "auto",
                     threads: int | None = None, backend: str = "auto") -> SentenceVectors:
    """Sentence vectors as an index embeds its questions (`index`), or by a chosen recipe (None = auto).

    With `index`, the encoder is made exactly as a Searcher of that index makes it (same measured path),
    so the vectors are the ones its searches use.
    """
    from indexer.embed.resolve import encoder_for, resolve_recipe
    from indexer.store.folder import check_index_folder, connect, read_manifest

    if index is not None:
        if layer is not None or pooling is not None:
            raise BertdexError("--layer and --pooling come from the index's recipe with --index: leave them out")
        folder = check_index_folder(Path(index))
        db = connect(folder, readonly=True)
        try:
            recipe = read_manifest(db, folder).recipe
        finally:
            db.close()
        # a Searcher's encoder: the question path (it may differ from the bulk path entries were embedded with)
        encoder = encoder_for(recipe, model=model, precision=precision, threads=threads, backend=backend,
                              purpose="question")
        reason = f"the recipe of the index {folder}"
    else:
        resolved = resolve_recipe(model or default_model(texts), layer=layer, pooling=pooling, precision=precision,
                                  threads=threads, backend=backend)
        recipe, encoder, reason = resolved.recipe, resolved.encoder, resolved.reason
    return embed_texts(encoder, recipe, texts, reason)


def embed_texts(encoder: Encoder, recipe: Recipe, texts: list[str], reason: str = "") -> SentenceVectors:
    """`texts` normalized as indexing and search do, then embedded by `recipe` (one vector each, cut if long)."""
    cleaned = [normalize_text(text) for text in texts]
    if not cleaned or not all(cleaned):
        raise BertdexError("empty text: give one or more non-empty texts")
    embedded = encoder.embed(cleaned, layer=recipe.layer, pooling=recipe.pooling,
                             exclude_special=recipe.exclude_special, prefix=recipe.query_prefix,
                             role="query")
    return SentenceVectors(tuple(cleaned), embedded.vectors, recipe, embedded.truncated, reason)


# -- saving -------------------------------------------------------------------------------------


def save_vectors(path: str | Path, vectors: np.ndarray, labels: list[dict], about: dict) -> list[Path]:
    """Write vectors with what they stand for; returns the files written.

    x.json: {about..., "items": [{label..., "vector": [...]}, ...]}.
    x.npy: the float32 matrix, and x.json beside it with the same minus the vectors (items in row order).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".npy"):
        raise BertdexError(f"--out {path}: write .json or .npy")
    vectors = np.asarray(vectors, dtype=np.float32)
    items = [dict(label) for label in labels]
    try:
        if suffix == ".npy":
            np.save(path, vectors)
            sidecar = path.with_suffix(".json")
            sidecar.write_text(json.dumps({**about, "shape": list(vectors.shape), "items": items},
                                          ensure_ascii=False, indent=1), encoding="utf-8")
            return [path, sidecar]
        for item, vector in zip(items, vectors):
            item["vector"] = vector.tolist()
        path.write_text(json.dumps({**about, "shape": list(vectors.shape), "items": items}, ensure_ascii=False),
                        encoding="utf-8")
    except OSError as error:
        raise BertdexError(f"cannot write {path}: {error.strerror or error}") from None
    return [path]

"""What a BERT model sees of one text: its tokens and ids, and its hidden states.

The first steps of the embedding tutorial as functions over an `Encoder` built with all its
layers (`load_encoder`): the token table, the [layers x tokens x hidden] shape with each layer's
value range, and a histogram of one token's values in one layer. It works for WordPiece tokenizers
(BERT: "##" continues a word, [CLS]/[SEP]) and SentencePiece ones (XLM-R, e5: "▁" starts a word, <s>/</s>)
alike: words come from the tokenizer's word_ids() and offsets, special tokens from its all_special_ids,
never from the pieces' spelling. Nothing here imports torch: the encoder's tokenizer and `hidden_states`
do the work. Word and sentence vectors are in `indexer.tutorial.words`.
"""

from __future__ import annotations

import warnings

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexer.embed.encoder import Encoder, has_hangul_jamo
from indexer.errors import BertdexError, UsageError
from indexer.embed.models import default_model, resolve_model_folder, trained_pooling
from indexer.embed.recipe import absolute_layer
from indexer.store.keywords import hangul_syllable


def load_encoder(model: str | None = None, *, max_length: int | None = None, precision: str = "fp32",
                 threads: int | None = None) -> Encoder:
    """An encoder that computes every hidden state (keep_layers=None), in fp32 unless asked otherwise.

    Its window is the one indexing would use: `max_length`, else the checkpoint's trained one, else the model's.
    """
    folder = resolve_model_folder(model or default_model())
    trained = trained_pooling(folder)
    return Encoder(folder, max_length=max_length or (trained.max_length if trained else None), keep_layers=None,
                   precision=precision, threads=threads)


def check_text(text: str) -> str:
    if not text or not text.strip():
        raise BertdexError("empty text: give some words")
    return text


# -- tokens -------------------------------------------------------------------------------------

STYLE_NOTES = {"wordpiece": "WordPiece: ## marks a piece that continues a word",
               "sentencepiece": "SentencePiece: ▁ marks a piece that starts a word"}


def piece_style(tokenizer) -> str:
    """'wordpiece', 'sentencepiece' (a Metaspace pre-tokenizer: XLM-R, e5), else the model's kind in lower case."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "unknown"
    kind = type(backend.model).__name__
    if kind == "WordPiece":
        return "wordpiece"
    return "sentencepiece" if "Metaspace" in repr(backend.pre_tokenizer) else kind.lower()


def char_span(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's characters without the whitespace before them: a SentencePiece piece's "▁" stands
    for the space before its word, and its offsets include it. A lone "▁" becomes empty at its word.

    char_span("a 배", 1, 3) -> (2, 3)
    """
    while start < end and text[start].isspace():
        start += 1
    return start, end


@dataclass(frozen=True)
class Token:
    """One token (a WordPiece or SentencePiece piece): `word` is the index of the word it belongs to
    (None for the special tokens, [CLS]/[SEP] or <s>/</s>), start/end its characters in the text
    (without the space a "▁" piece carries), `kept` False when it lies past the model's window."""

    position: int
    token: str
    id: int
    word: int | None
    start: int
    end: int
    kept: bool


@dataclass(frozen=True)
class TokenTable:
    text: str
    tokens: tuple[Token, ...]
    unknown: int
    max_length: int
    truncated: bool
    lowercase: bool
    decomposes_hangul: bool | None  # None when the text holds no Hangul (nothing to split)
    warnings: tuple[str, ...]
    style: str = "wordpiece"  # piece_style(): how pieces mark word boundaries
    unk_token: str = "[UNK]"  # what the tokenizer calls an unknown piece (<unk> in SentencePiece)

    @property
    def has_hangul(self) -> bool:
        """Whether the text holds Hangul (syllables or jamo): only then is "Hangul into jamo" worth saying."""
        return any("\uac00" <= ch <= "\ud7a3" for ch in self.text) or has_hangul_jamo(self.text)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tokens"] = [asdict(token) for token in self.tokens]
        data["warnings"] = list(self.warnings)
        return data


def token_table(encoder: Encoder, text: str) -> TokenTable:
    """Every token of `text` with its id, as the tokenizer makes them (no truncation: cut ones are marked).

    token_table(encoder, "hi") -> TokenTable(tokens=(Token(0, '[CLS]', 101, ...), Token(1, 'hi', 7632, ...), ...))
    """
    tokenizer = _fast_tokenizer(encoder)
    encoded = tokenizer(check_text(text), truncation=False, return_offsets_mapping=True, verbose=False)
    ids, words = encoded["input_ids"], encoded.word_ids()
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special = set(tokenizer.all_special_ids)
    room = encoder.max_length - tokenizer.num_special_tokens_to_add()
    tokens, content = [], 0
    for position, (piece, token_id, word, (start, end)) in enumerate(zip(pieces, ids, words, encoded["offset_mapping"])):
        is_special = word is None and token_id in special
        kept = is_special or content < room
        content += not is_special
        start, end = char_span(text, int(start), int(end))
        tokens.append(Token(position, piece, int(token_id), word, start, end, kept))
    unknown = sum(token_id == tokenizer.unk_token_id for token_id in ids)
    truncated = len(ids) > encoder.max_length
    warnings = []
    if truncated:
        warnings.append(f"{len(ids)} tokens: the {content - room} past the model's window of "
                        f"{encoder.max_length} are cut when embedding")
    if unknown:
        warnings.append(f"{unknown} piece(s) are {tokenizer.unk_token}: the vocabulary cannot spell them, "
                        "their meaning is lost")
    warnings += _hangul_warning(encoder, text)
    return TokenTable(text, tuple(tokens), unknown, encoder.max_length, truncated, encoder.lowercase,
                      encoder.decomposes_hangul, tuple(warnings), piece_style(tokenizer), str(tokenizer.unk_token))


def _hangul_warning(encoder: Encoder, text: str) -> list[str]:
    syllable = hangul_syllable(text)
    if syllable is None or not encoder.decomposes_hangul:
        return []
    pieces = " ".join(encoder.tokenizer.tokenize(syllable))
    return [f"this tokenizer lower-cases and strips accents (NFD), which splits Hangul syllables into jamo "
            f"({syllable} -> {pieces}): use a cased multilingual model for Korean (--model multilingual-e5-small)"]


def _fast_tokenizer(encoder: Encoder):
    tokenizer = encoder.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise BertdexError(f"the tokenizer of {encoder.folder} is not a fast tokenizer: word positions need one "
                           "(a tokenizer.json, or a vocab.txt that transformers can convert)")
    return tokenizer


# -- hidden states ------------------------------------------------------------------------------


def hidden_states_of(encoder: Encoder, text: str):
    """All hidden states of `text` as [layers+1, tokens, hidden] float32, and the tokenizer's encoding.

    The text is cut at the encoder's max_length, as indexing does; the encoding's word_ids() and
    offset_mapping say which word and characters each token row comes from.
    """
    if encoder.keep_layers is not None and encoder.keep_layers < encoder.num_layers:
        raise BertdexError(f"this encoder computes hidden states 0..{encoder.keep_layers} only: "
                           "build it with keep_layers=None (load_encoder) to see every layer")
    tokenizer = _fast_tokenizer(encoder)
    encoded = tokenizer(check_text(text), truncation=True, max_length=encoder.max_length,
                        return_offsets_mapping=True, return_tensors="pt")
    types = encoded.get("token_type_ids")  # XLM-R (SentencePiece) tokenizers make none: all type 0
    states = encoder.hidden_states(encoded["input_ids"], encoded["attention_mask"],
                                   np.zeros_like(encoded["input_ids"]) if types is None else types, None)
    return states[:, 0], encoded


@dataclass(frozen=True)
class LayerRange:
    """Value range of one hidden state over all tokens: layer 0 is the embeddings output."""

    layer: int
    minimum: float
    maximum: float
    mean: float
    std: float


@dataclass(frozen=True)
class LayerReport:
    text: str
    tokens: tuple[str, ...]
    shape: tuple[int, int, int]  # [layers+1, tokens, hidden]
    layers: tuple[LayerRange, ...]

    def to_dict(self) -> dict:
        return {"text": self.text, "tokens": list(self.tokens), "shape": list(self.shape),
                "layers": [asdict(layer) for layer in self.layers]}


def layer_report(encoder: Encoder, text: str) -> LayerReport:
    """The hidden states' shape, and each layer's min/max/mean/std over all its tokens and features."""
    states, encoded = hidden_states_of(encoder, text)
    ranges = tuple(
        LayerRange(i, float(layer.min()), float(layer.max()), float(layer.mean()), float(layer.std()))
        for i, layer in enumerate(states)
    )
    tokens = tuple(encoder.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist()))
    return LayerReport(text, tokens, tuple(int(n) for n in states.shape), ranges)


@dataclass(frozen=True)
class Histogram:
    path: Path
    layer: int
    position: int
    token: str
    values: np.ndarray  # the hidden-size values that were plotted


def token_histogram(encoder: Encoder, text: str, path: str | Path, *, layer: int = 5, position: int = 5,
                    bins: int = 200) -> Histogram:
    """A PNG histogram of token `position`'s values in hidden state `layer` (negative: from the top).

    Needs matplotlib (pip install 'bertdex[tutorial]'), imported only here.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BertdexError(f"--histogram {path}: the image is written as PNG, give a .png file name")
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise BertdexError("the histogram needs matplotlib: pip install 'bertdex[tutorial]'") from None
    states, encoded = hidden_states_of(encoder, text)
    index = absolute_layer(layer, states.shape[0] - 1)
    names = encoder.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    if not 0 <= position < states.shape[1]:
        raise UsageError(f"--token {position} is out of range: the text has {states.shape[1]} tokens "
                           f"(0..{states.shape[1] - 1}, {names[0]} is 0)")
    token = names[position]
    values = states[index, position]
    figure = Figure(figsize=(8, 6))
    axes = figure.subplots()
    axes.hist(values, bins=bins)
    axes.set_title(f"hidden state {index}, token {position} {token!r}: {values.size} values")
    axes.set_xlabel("value")
    axes.set_ylabel("count")
    try:
        with warnings.catch_warnings():  # Hangul in the title: the default font lacks it, a box is drawn
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            figure.savefig(path, format="png")
    except OSError as error:
        raise BertdexError(f"cannot write {path}: {error.strerror or error}") from None
    return Histogram(path, index, position, token, values)

"""A model's tokenizer.json read by the `tokenizers` library alone: what the question path needs, without transformers.

transformers' fast tokenizers are this same Rust tokenizer behind a large Python layer (its import alone
takes seconds). FastTokenizer answers the calls the Encoder makes (`__call__` with truncation, stride,
overflowing windows, offsets and special-token masks; `tokenize`; the special ids) the way
`PreTrainedTokenizerFast` does. Whether it agrees with transformers for a model is measured, not
assumed: `agrees_with` runs both on the probe texts, and indexer.embed.choose keeps the answer beside
the path it chose. This module does not pad to tensors, decode, or convert vocab.txt (the tutorial keeps
transformers for that).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

# what PreTrainedTokenizerFast returns unless tokenizer_config.json names its own
DEFAULT_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")


def has_fast_tokenizer(folder: Path) -> bool:
    return (Path(folder) / "tokenizer.json").is_file()


class FastTokenizer:
    """FastTokenizer(folder)(["a question"], truncation=True, max_length=128) -> {"input_ids": [[101, ...]], ...}"""

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.folder = folder
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        settings = _read_json(folder / "tokenizer_config.json")
        specials = {**_read_json(folder / "special_tokens_map.json"), **settings}
        self.model_input_names = list(settings.get("model_input_names") or DEFAULT_INPUT_NAMES)
        named = {role: _content(specials.get(f"{role}_token")) for role in ("unk", "pad", "cls", "sep", "mask", "bos", "eos")}
        self.unk_token = named["unk"]
        self.unk_token_id = self._id(named["unk"])
        self.pad_token_id = self._id(named["pad"])
        self.all_special_ids = sorted({i for i in map(self._id, named.values()) if i is not None})

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def tokenize(self, text: str) -> list[str]:
        """The pieces of `text` without special tokens: tokenize("Hello") -> ['hello'] (uncased BERT)."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def __call__(self, texts: str | list[str], *, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, stride: int = 0, return_overflowing_tokens: bool = False,
                 return_offsets_mapping: bool = False, return_special_tokens_mask: bool = False,
                 padding: bool = False, verbose: bool = True) -> dict:
        """Lists per text (or per window with overflowing tokens), as PreTrainedTokenizerFast returns them."""
        if padding:
            raise ValueError("FastTokenizer does not pad: the Encoder pads its batches itself")
        single = isinstance(texts, str)
        if truncation and max_length:
            self.backend.enable_truncation(max_length, stride=stride, strategy="longest_first", direction="right")
        else:
            self.backend.no_truncation()
        self.backend.no_padding()
        encodings = self.backend.encode_batch([texts] if single else list(texts), add_special_tokens=add_special_tokens)
        rows, owners = [], []
        for number, encoding in enumerate(encodings):
            windows = [encoding, *encoding.overflowing] if return_overflowing_tokens else [encoding]
            rows += windows
            owners += [number] * len(windows)
        out = {"input_ids": [e.ids for e in rows], "attention_mask": [e.attention_mask for e in rows]}
        if "token_type_ids" in self.model_input_names:
            out["token_type_ids"] = [e.type_ids for e in rows]
        if return_offsets_mapping:
            out["offset_mapping"] = [[tuple(o) for o in e.offsets] for e in rows]
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [e.special_tokens_mask for e in rows]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = owners
        if single and not return_overflowing_tokens:
            out = {name: value[0] for name, value in out.items()}
        return out


def agrees_with(fast: FastTokenizer, reference, texts: list[str], max_length: int) -> bool:
    """True when `fast` gives `reference` (a transformers tokenizer)'s ids, types, offsets and windows on `texts`.

    Checked whole, cut at `max_length`, and in overlapping windows of a quarter of it, as the Encoder asks."""
    calls = [dict(truncation=True, max_length=max_length, return_overflowing_tokens=True,
                  return_offsets_mapping=True, return_special_tokens_mask=True),
             dict(truncation=True, max_length=max(8, max_length // 4), stride=2, return_overflowing_tokens=True,
                  return_offsets_mapping=True),
             dict(add_special_tokens=False, return_offsets_mapping=True)]
    try:
        for options in calls:
            mine, theirs = fast(texts, **options), reference(texts, padding=False, **options)
            for name, value in mine.items():
                if [list(map(_plain, row)) if isinstance(row, list) else row for row in value] != \
                        [list(map(_plain, row)) if isinstance(row, list) else row for row in theirs[name]]:
                    return False
        return fast.tokenize(texts[0]) == reference.tokenize(texts[0]) and \
            fast.pad_token_id == reference.pad_token_id and \
            set(fast.all_special_ids) >= set(reference("x")["input_ids"][:1]) & set(reference.all_special_ids)
    except Exception:
        return False


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _content(token) -> str | None:
    """A special token as tokenizer_config.json writes it: "[PAD]" or {"content": "[PAD]", ...}."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None

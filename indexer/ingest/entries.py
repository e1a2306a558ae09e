"""The one check of an entry (key and text) and of a question, for every door: files, HTTP and the CLI.

Texts are checked after NFKC normalization (what is embedded), so a short text that normalization
expands (U+FDFA becomes 18 characters) meets the same limit as its expansion. A problem is one
short reason ("empty text"); the caller adds where it was (file:line, documents[i], the option).
This module does not read files or embed.
"""

from __future__ import annotations

import re
from pathlib import Path

from indexer.errors import BertdexError, InputUnreadable
from indexer.store.keywords import normalize_text

FILE_TEXT_CHARS = 1_000_000  # a file may hold long manuals: they are split into windows
HTTP_TEXT_CHARS = 20_000  # one HTTP request must not hold the write lock for long
MAX_KEY_CHARS = 256
EMPTY = "the text is empty"
ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str, max_chars: int) -> tuple[str, str | None]:
    """(normalized text, None) when `text` may be indexed, else (…, the reason).

    text_problem("  Hello\\u200b ", 20_000) -> ("Hello\\u200b", None); text_problem("\\u200b", 20_000) -> ("\\u200b", EMPTY)
    """
    surrogate = _SURROGATE.search(text)
    if surrogate:
        return text, f"the text is not valid Unicode (a lone surrogate at character {surrogate.start() + 1})"
    normalized = normalize_text(text)
    if not ZERO_WIDTH.sub("", normalized).strip():
        return normalized, EMPTY
    if "\x00" in normalized:
        return normalized, "the text contains a NUL character"
    if len(normalized) > max_chars:
        return normalized, (f"the text has {len(normalized):,} characters after normalization; "
                            f"the limit is {max_chars:,}")
    return normalized, None


def key_problem(key: str) -> str | None:
    """Why `key` cannot name an entry, or None: empty, control characters, lone surrogates, too long."""
    if not ZERO_WIDTH.sub("", key).strip():
        return "the key is empty"
    if _CONTROL.search(key):
        return f"key {key!r} contains a control character"
    if _SURROGATE.search(key):
        return f"key {key!r} is not valid Unicode (a lone surrogate)"
    if len(key) > MAX_KEY_CHARS:
        return f"key {key[:40]!r}... has {len(key)} characters; the limit is {MAX_KEY_CHARS}"
    return None


def field_problem(name, value, max_chars: int) -> str | None:
    """Why a stored field (or the group) cannot be kept, or None: a NUL character in its name or value
    (nested values too), a lone surrogate, or a value longer than the text limit of its door.

    field_problem("note", "a\\x00b", 20_000) -> "field 'note' contains a NUL character"
    """
    label = f"field {str(name)[:40]!r}"
    if "\x00" in str(name) or _SURROGATE.search(str(name)):
        return f"{label}: its name contains a NUL character or a lone surrogate"
    size = 0
    for text in _strings(value):
        if "\x00" in text:
            return f"{label} contains a NUL character"
        if _SURROGATE.search(text):
            return f"{label} is not valid Unicode (a lone surrogate)"
        size += len(text)
        if size > max_chars:
            return f"{label} has over {max_chars:,} characters; the limit is {max_chars:,}"
    return None


def _strings(value):
    """Every string inside a stored value (keys of nested objects too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield str(name)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


def check_keys(keys: list[str]) -> list[str]:
    """The keys stripped, or BertdexError naming the first bad one (the CLI's `delete`)."""
    for number, key in enumerate(keys, start=1):
        problem = key_problem(key)
        if problem:
            raise BertdexError(f"key {number}: {problem}")
    return [key.strip() for key in keys]


def check_question(question: str, where: str = "question") -> None:
    """BertdexError when a question cannot be embedded: empty (also of zero-width characters), a NUL character,
    or not valid Unicode. Feedback's question is checked here too."""
    if _SURROGATE.search(question):
        raise BertdexError(f"{where} is not valid Unicode (a lone surrogate; was the input UTF-8?)")
    if "\x00" in question:
        raise BertdexError(f"{where} contains a NUL character")
    if not ZERO_WIDTH.sub("", normalize_text(question)).strip():
        raise BertdexError(f"empty {where}")


def question_lines(raw: bytes, name: str) -> list[str]:
    """The non-empty lines of `raw`, decoded strictly as UTF-8; InputUnreadable names the line.

    question_lines(b"refund\\n\\ntrack my order\\n", "stdin") -> ["refund", "track my order"]
    """
    lines = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as error:
            raise InputUnreadable(f"{name}:{number}: not valid UTF-8 (byte {error.start + 1})") from None
        if text:
            lines.append(text)
    return lines


def read_question_file(path: Path) -> list[str]:
    """`question_lines` of a file; InputUnreadable when it is missing, a folder or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise InputUnreadable(f"{path}: is a folder, not a file of questions")
    try:
        return question_lines(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise InputUnreadable(f"{path}: no such file") from None
    except OSError as error:
        raise InputUnreadable(f"{path}: cannot be read ({error.strerror})") from None

"""Text -> keyword terms for the SQLite FTS5 table: English words, Korean/CJK character bigrams.

Hangul and CJK runs are joined across spaces before they are cut into bigrams, so the terms do
not depend on word spacing, which Korean writers vary freely ("비밀번호 변경" == "비밀번호변경").
FTS5 then stems the Latin words (porter) and ranks with BM25. This module does no I/O.
"""

from __future__ import annotations

import re
import unicodedata

_CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]+(?:\s+[{_CJK}]+)*|[^\W{_CJK}]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")


def normalize_text(text: str) -> str:
    """NFKC (full-width forms to ASCII, composed Hangul) and collapsed whitespace.

    normalize_text("  ＨＥＬＬＯ\\t 세계 ") -> "HELLO 세계"
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())


def hangul_syllable(text: str) -> str | None:
    """The first composed Hangul syllable of `text`, or None: hangul_syllable("PIN 변경") -> "변"."""
    return next((ch for ch in text if "\uac00" <= ch <= "\ud7a3"), None)


def has_jamo(text: str) -> bool:
    """Whether `text` holds Hangul jamo (what an accent-stripping tokenizer makes of syllables)."""
    return any("\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f" for ch in text)


def keyword_terms(text: str) -> list[str]:
    """Search terms of `text`.

    keyword_terms("Reset my PIN 비밀번호 변경") -> ['reset', 'my', 'pin', '비밀', '밀번', '번호', '호변', '변경']
    """
    terms: list[str] = []
    for match in _TOKEN.finditer(normalize_text(text).lower()):
        token = match.group()
        if _IS_CJK.match(token):
            run = "".join(token.split())
            terms.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
        else:
            terms.append(token)
    return terms


def fts_document(text: str) -> str:
    """The string stored in the FTS5 column: the terms joined by spaces."""
    return " ".join(keyword_terms(text))


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression that ORs the quoted terms of `text` (None when it has none)."""
    terms = dict.fromkeys(keyword_terms(text))
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)

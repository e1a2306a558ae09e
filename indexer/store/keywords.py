"""Text -> keyword terms for the SQLite FTS5 table: English words; Korean bigrams plus morphemes.

Two term schemes; an index records the one it was written with (manifest settings["keyword_terms"])
and is queried with the same one, so an index from an older bertdex keeps answering:
  "bigram"  (indexes without the setting): Hangul and CJK runs are joined across spaces and cut into
            character bigrams, so terms do not depend on word spacing, which Korean writers vary freely
            ("비밀번호 변경" == "비밀번호변경").
  "kiwi-1"  (new indexes): the same bigrams, plus the content morphemes of the Korean text from Kiwi
            (kiwipiepy): nouns, numerals, verb/adjective stems and roots, without the particles and
            endings, so "비밀번호를" and "비밀번호가" share the term 번호 and the stem 잊 of 잊어버렸어요 is a
            term. Measured on ko-question-pair, keyword MRR@10 0.608 -> 0.651 (bench/korean_keywords.py).
  "kiwi-2"  (new indexes since): kiwi-1 without English stop words ("can", "get", "my", "the", ...):
            on a 40-entry FAQ a question sharing only "can" and "get" with an entry ranked it first in
            hybrid (issue 22); Korean terms are kiwi-1's (particles and endings are already left out).
Latin words are otherwise the same in all; FTS5 stems them (porter) and ranks with BM25. Kiwi is loaded
once per process, and only for a text that has Hangul in it. This module does no I/O.
"""

from __future__ import annotations

import re
import threading
import unicodedata

from indexer.errors import BertdexError

_CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]+(?:\s+[{_CJK}]+)*|[^\W{_CJK}]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")

LEGACY_SCHEME = "bigram"  # what an index without settings["keyword_terms"] holds
NEW_INDEX_SCHEME = "kiwi-2"
SCHEMES = (LEGACY_SCHEME, "kiwi-1", NEW_INDEX_SCHEME)
KIWI_SCHEMES = ("kiwi-1", "kiwi-2")
# English function words (articles, pronouns, auxiliaries, prepositions, conjunctions) and the verbs every
# question has ("can I get"): left out of kiwi-2's terms, so a question never matches an entry on them alone.
# The question words (what, how, why, ...) stay: they carry the kind of question, and leaving them out too
# cost keyword MRR@10 on bertfaq-covidfaq (0.500 -> 0.433; bench/plain.py, docs/benchmarks.md)
ENGLISH_STOP_WORDS = frozenset("""a an the and or but if of to in on at by for from with about into as i me my myself we us
our you your he him his she her it its they them their this that these those is am are was were be been being do does
did have has had can could get gets got getting would should will shall may might must t s m d ll ve re""".split())
# ("can't" is the tokens "can", "t")
# Kiwi tags kept by kiwi-1 (an irregular stem's tag carries a suffix: VV-I). Dependent nouns (것, 수)
# and pronouns (저, 나) are left out: they behave like function words (measured: MRR@10 0.644 with them).
CONTENT_TAGS = frozenset({"NNG", "NNP", "NR", "VV", "VA", "XR"})

_kiwi = None
_kiwi_lock = threading.Lock()


def normalize_text(text: str) -> str:
    """NFKC (full-width forms to ASCII, composed Hangul) and collapsed whitespace.

    normalize_text("  ＨＥＬＬＯ\\t 세계 ") -> "HELLO 세계"
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())


def scheme_of(settings: dict) -> str:
    """The term scheme of an index, from its manifest settings."""
    found = settings.get("keyword_terms") if isinstance(settings, dict) else getattr(settings, "keyword_terms", None)
    return found or LEGACY_SCHEME


def hangul_syllable(text: str) -> str | None:
    """The first composed Hangul syllable of `text`, or None: hangul_syllable("PIN 변경") -> "변"."""
    return next((ch for ch in text if "\uac00" <= ch <= "\ud7a3"), None)


def has_jamo(text: str) -> bool:
    """Whether `text` holds Hangul jamo (what an accent-stripping tokenizer makes of syllables)."""
    return any("\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f" for ch in text)


def keyword_terms(text: str, scheme: str = NEW_INDEX_SCHEME) -> list[str]:
    """Search terms of `text`: the bigram terms, then (kiwi-1) the Korean content morphemes.

    keyword_terms("Reset my PIN 비밀번호 변경", "bigram") -> ['reset', 'my', 'pin', '비밀', '밀번', '번호', '호변', '변경']
    keyword_terms("비밀번호를 바꿨어요") -> ['비밀', '밀번', '번호', '호를', '를바', '바꿨', '꿨어', '어요', '비밀', '번호', '바꾸']
    keyword_terms("Can I get a refund?") -> ['refund']   (kiwi-1: ['can', 'i', 'get', 'a', 'refund'])
    """
    if scheme not in SCHEMES:
        raise BertdexError(f"this index's keyword terms are {scheme!r}, which this bertdex does not know "
                           f"(it knows {', '.join(SCHEMES)}): upgrade bertdex or rebuild the index with --replace")
    normalized = normalize_text(text)
    terms: list[str] = []
    stop = ENGLISH_STOP_WORDS if scheme == NEW_INDEX_SCHEME else frozenset()
    for match in _TOKEN.finditer(normalized.lower()):
        token = match.group()
        if _IS_CJK.match(token):
            run = "".join(token.split())
            terms.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
        elif token not in stop:
            terms.append(token)
    if scheme in KIWI_SCHEMES and _HANGUL.search(normalized):
        terms.extend(korean_morphemes(normalized))
    return terms


def korean_morphemes(text: str, tags: frozenset[str] | None = CONTENT_TAGS) -> list[str]:
    """The morphemes of `text` that contain Hangul and have one of `tags` (None: any), in order.

    korean_morphemes("비밀번호가 기억이 안 나요") -> ['비밀', '번호', '기억', '나']
    korean_morphemes("비밀번호가", None) -> ['비밀', '번호', '가']
    """
    analyzer = _analyzer()
    with _kiwi_lock:  # one analysis at a time: the analyzer is shared by the process's threads
        tokens = analyzer.tokenize(text)
    return [t.form for t in tokens if (tags is None or t.tag.split("-")[0] in tags) and _HANGUL.search(t.form)]


def _analyzer():
    """Kiwi, loaded on first use (~3-5 s, ~330 MB) and kept for the process."""
    global _kiwi
    with _kiwi_lock:
        if _kiwi is None:
            from kiwipiepy import Kiwi

            # multi-word proper nouns (WikiData) only merge words the bigrams already join; without them
            # Kiwi loads in a third of the time with 190 MB less memory, and the terms measured the same
            _kiwi = Kiwi(load_multi_dict=False)
        return _kiwi


def fts_document(text: str, scheme: str = NEW_INDEX_SCHEME) -> str:
    """The string stored in the FTS5 column: the terms joined by spaces."""
    return " ".join(keyword_terms(text, scheme))


def fts_query(text: str, scheme: str = NEW_INDEX_SCHEME) -> str | None:
    """An FTS5 MATCH expression that ORs the quoted terms of `text` (None when it has none)."""
    terms = dict.fromkeys(keyword_terms(text, scheme))
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)

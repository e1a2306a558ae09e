"""What the page shows beside an answer: the matched words, a confidence band, the filterable fields, variant texts.

Pure functions over strings and rows (SQLite is read through the connection a caller gives); the
routes in search.server.app call them. Ranges are [start, end) in Python characters (code
points), as `Hit.span` is. This module does not rank or cut answers; the Searcher does.
"""

from __future__ import annotations

import json
import re

from indexer.store.keywords import _CJK

_WORD = re.compile(rf"[{_CJK}]+|[^\W{_CJK}]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")
# words too common to be worth marking in an answer
STOPWORDS = frozenset("""a an and are as at be but by can could do does did for from had has have how i if in is it its
me my no not of on or our so that the their them then there these they this to us was we were what when where which
who why will with would you your i'm can't don't""".split())
MAX_FACET_VALUES = 30
MAX_FACET_CHARS = 60
NEAR_CUT = 0.25  # dense: a score within this share of the way from the cut to 1.0 is "possible", above it "good"


def question_terms(question: str) -> tuple[set[str], set[str]]:
    """(Latin words, CJK character bigrams) of a question worth marking.

    question_terms("How do I reset 비밀번호?") -> ({'reset'}, {'비밀', '밀번', '번호'})
    """
    words, bigrams = set(), set()
    for token in _WORD.findall(question.lower()):
        if _IS_CJK.match(token):
            bigrams.update(token[i : i + 2] for i in range(len(token) - 1))
        elif len(token) >= 3 and token not in STOPWORDS:
            words.add(token)
    return words, bigrams


def _same_word(a: str, b: str) -> bool:
    """Equal, or one a prefix of the other of at least 4 letters (reset/resetting, refund/refunds)."""
    short, long = sorted((a, b), key=len)
    return a == b or (len(short) >= 4 and long.startswith(short))


def matched_ranges(terms: tuple[set[str], set[str]], text: str) -> list[list[int]]:
    """[start, end) ranges of `text` that match the question's terms, merged and in order.

    matched_ranges(question_terms("reset password"), "Resetting your password") -> [[0, 9], [15, 23]]
    """
    words, bigrams = terms
    ranges: list[list[int]] = []
    for match in _WORD.finditer(text):
        token, start = match.group(), match.start()
        if _IS_CJK.match(token):
            for i in range(len(token) - 1):
                if token[i : i + 2].lower() in bigrams:
                    ranges.append([start + i, start + i + 2])
        elif any(_same_word(token.lower(), word) for word in words):
            ranges.append([start, match.end()])
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def highlights(question: str, text: str, fields: dict) -> dict[str, list[list[int]]]:
    """Matched ranges of the entry's text and of each string field that has any."""
    terms = question_terms(question)
    found = {"text": matched_ranges(terms, text)}
    for name, value in fields.items():
        if isinstance(value, str) and (ranges := matched_ranges(terms, value)):
            found[name] = ranges
    return found


def band(score: float, cut: float | None, mode: str) -> str | None:
    """How a person should read a score, given the calibrated cut: good, possible, below, or None (no cut).

    band(0.9, 0.4, "dense") -> 'good'; band(0.45, 0.4, "dense") -> 'possible'; band(0.3, 0.4, "dense") -> 'below'
    """
    if cut is None:
        return None
    if score < cut:
        return "below"
    if mode == "dense" and cut < 1 and score < cut + NEAR_CUT * (1 - cut):
        return "possible"
    return "good"


def cut_source(search, asked: float | None, cut: float | None) -> str | None:
    """Where the cut an answer was judged by came from: "given" (the request's min_score), the index's
    ("from the collection", "calibrated on N labelled": SearchSettings.cut_source), or None (no cut).

    cut_source(SearchSettings(min_score=.3, cut={"source": "collection"}), None, .3) -> 'from the collection'
    """
    if cut is None:
        return None
    if asked is not None:
        return "given"
    return search.cut_source()


def facets(db) -> dict[str, list[str]]:
    """Stored fields whose values repeat (at most 30 distinct short ones): name -> sorted values.

    Fields such as `category` become the page's filters; free text such as `answer` does not.
    """
    values: dict[str, dict[str, int]] = {}
    documents = 0
    for (fields,) in db.execute("SELECT fields FROM documents"):
        documents += 1
        for name, value in json.loads(fields or "{}").items():
            if isinstance(value, (str, int, bool)) and len(str(value)) <= MAX_FACET_CHARS:
                seen = values.setdefault(name, {})
                if len(seen) <= MAX_FACET_VALUES:
                    seen[str(value)] = seen.get(str(value), 0) + 1
    return {name: sorted(seen) for name, seen in sorted(values.items())
            if 2 <= len(seen) <= MAX_FACET_VALUES and len(seen) < documents and max(seen.values()) > 1}


def texts_of(db, keys: list[str]) -> dict[str, str]:
    """key -> stored text, for the keys that exist."""
    found = {}
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        found.update(db.execute(f"SELECT key, text FROM documents WHERE key IN ({','.join('?' * len(part))})",
                                part).fetchall())
    return found

"""The questions tuning measures on: labelled queries, or the collection's own groups of phrasings.

Without labels, each entry of a group of several phrasings asks for the other members of its group;
the entry itself, and any entry with its text (after normalization), is removed from its own ranking.
With labels, `ignore_identical_ids` removes an entry whose key is the query's id or whose text is the
query's text (BEIR's option). Each question carries a fold key: its group without labels (so a group's
phrasings are never split between choosing and measuring), else its query id. This module does not embed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from indexer.errors import BertdexError
from indexer.store.keywords import normalize_text
from search.quality.evaluate import identical_entries, labelled_queries


@dataclass(frozen=True)
class HeldOut:
    """One tuning question: its text, what counts as relevant, document ids it must not see, and its fold key."""

    text: str
    relevance: dict
    exclude: frozenset = frozenset()
    fold_key: str = ""


@dataclass(frozen=True)
class Questions:
    """Held-out questions of one source, and how to name it."""

    items: list[HeldOut]
    source: str
    labelled: bool


def read_documents(db) -> list[dict]:
    rows = db.execute("SELECT id, key, text, fields, group_key FROM documents ORDER BY id").fetchall()
    if not rows:
        raise BertdexError("the index is empty: nothing to tune")
    return [{"id": r[0], "key": r[1], "text": r[2], "fields": json.loads(r[3] or "{}"), "group": r[4]} for r in rows]


def labelled_questions(documents: list[dict], queries, qrels, max_queries: int, ignore_identical_ids: bool) -> Questions:
    judged, _ = labelled_queries(queries, qrels)
    exclude = [frozenset()] * len(judged)
    if ignore_identical_ids:
        exclude = identical_entries([(d["id"], d["key"], d["text"]) for d in documents],
                                    [(qid, text) for qid, text, _ in judged])
    items = [HeldOut(text, relevance, ex, qid) for (qid, text, relevance), ex in zip(judged, exclude)]
    return Questions(spread(items, max_queries), f"labelled queries ({len(judged)})", True)


def group_questions(documents: list[dict], group_field: str | None, max_queries: int, *,
                    required: bool = True) -> Questions | None:
    """Each member of a group of phrasings, asking for the others; None (or an error if `required`) when none."""
    groups: dict[str, list[dict]] = {}
    for doc in documents:
        group = doc["fields"].get(group_field) if group_field else doc["group"]
        if group is not None and str(group).strip():
            groups.setdefault(str(group), []).append(doc)
    by_text: dict[str, set[int]] = {}
    for doc in documents:
        by_text.setdefault(normalize_text(doc["text"]), set()).add(doc["id"])
    items = []
    for group, members in groups.items():
        if len(members) < 2:
            continue
        for doc in members:
            same = by_text[normalize_text(doc["text"])] | {doc["id"]}
            relevance = {m["key"]: 1 for m in members if m["id"] not in same}
            if relevance:
                items.append(HeldOut(doc["text"], relevance, frozenset(same), group))
    if not items:
        if not required:
            return None
        where = f"field {group_field!r}" if group_field else "the index's groups (--group-field at index time)"
        raise BertdexError(f"nothing to tune on: give --queries and --qrels, or entries that share a group ({where} has "
                           "no group with two or more differently worded entries)")
    label = f"field {group_field}" if group_field else "group"
    return Questions(spread(items, max_queries),
                     f"entries sharing a {label}, each held out against the others ({len(items)})", False)


def answer_questions(documents: list[dict], max_queries: int, min_chars: int = 20) -> Questions | None:
    """Entries found by their own answers: with neither labels nor groups, a plain FAQ still stores, beside
    each question, the answer it gives (a text field not embedded). Each distinct answer asks for the entries
    that carry it. The field is the stored string field most entries have whose values are longest (at least
    `min_chars` on average) and mostly distinct; None when no field is like that.

    A proxy for people's questions: it can choose between recipes (a model, a layer, keywords on) that bring
    the words of an answer to its question, and the tuning gate still asks for a significant gain.
    """
    lengths: dict[str, list[int]] = {}
    for doc in documents:
        for name, value in doc["fields"].items():
            if isinstance(value, str) and value.strip():
                lengths.setdefault(name, []).append(len(value))
    fields = [name for name, found in lengths.items()
              if len(found) >= 0.8 * len(documents) and sum(found) / len(found) >= min_chars
              and len({doc["fields"].get(name) for doc in documents}) >= 0.5 * len(documents)]
    if not fields:
        return None
    field = max(fields, key=lambda name: sum(lengths[name]) / len(lengths[name]))
    by_answer: dict[str, list[str]] = {}
    for doc in documents:
        value = doc["fields"].get(field)
        if isinstance(value, str) and value.strip():
            by_answer.setdefault(normalize_text(value), []).append(doc["key"])
    items = [HeldOut(answer, {key: 1 for key in keys}, frozenset(), keys[0]) for answer, keys in by_answer.items()]
    return Questions(spread(items, max_queries),
                     f"entries found by their own answers (field {field}, {len(items)} answers)", False)


def spread(items: list, limit: int) -> list:
    """At most `limit` items, evenly spaced (deterministic)."""
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]

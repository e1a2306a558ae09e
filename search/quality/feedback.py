"""What agents' feedback says: the questions the index fails, grouped by meaning, and labelled queries to tune on.

A question is *missed* when the server logged it with no answer past the cut, or an agent marked
an answer to it wrong (down) and no answer to it right (up, or "right" on a lower answer). Missed
questions are embedded with the index's own recipe and grouped greedily: the most-asked one
leads a group and takes every ungrouped question at cosine >= `threshold` to it, and so on. Each
group is one FAQ entry the desk probably lacks. The threshold is measured on the index's own
groups (entries that are phrasings of one question): the lower quartile of their pairwise cosines,
but never below the 99th percentile of pairs from different groups; without groups, 0.6. Questions with an answer marked right become
labelled queries for `search.quality.tune`. This module reads feedback; it does not store it
(indexer.store.feedback) nor change the index.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.errors import BertdexError, UsageError
from indexer.store.feedback import FeedbackStore
from indexer.store.keywords import normalize_text
from search.searcher import Searcher

THRESHOLD = 0.6    # without groups to measure on
SAMPLE_GROUPS = 200  # groups embedded to measure the threshold
GOOD = ("up", "right")


@dataclass(frozen=True)
class Missed:
    """One distinct missed question: how often it was asked unanswered, and marked wrong."""

    question: str
    unanswered: int
    marked_wrong: int

    @property
    def count(self) -> int:
        return self.unanswered + self.marked_wrong


@dataclass(frozen=True)
class MissedGroup:
    """Missed questions close in meaning (the first leads), and the stored entry closest to the leader."""

    questions: tuple[Missed, ...]
    closest_key: str | None
    closest_text: str | None
    closest_score: float | None

    @property
    def count(self) -> int:
        return sum(q.count for q in self.questions)

    def to_dict(self) -> dict:
        return {"count": self.count, "question": self.questions[0].question,
                "questions": [{"question": q.question, "unanswered": q.unanswered, "marked_wrong": q.marked_wrong}
                              for q in self.questions],
                "closest": None if self.closest_key is None else
                {"key": self.closest_key, "text": self.closest_text, "score": round(self.closest_score, 6)}}


@dataclass(frozen=True)
class FeedbackReport:
    folder: str
    logged: int          # questions in the query log
    unanswered: int      # of them, answered by nothing past the cut
    verdicts: int
    marked_wrong: int    # distinct questions marked wrong and never right
    marked_right: int    # distinct questions with an answer marked right (labelled queries for tune)
    threshold: float
    threshold_source: str
    groups: tuple[MissedGroup, ...]

    def to_dict(self) -> dict:
        return {"folder": self.folder, "logged": self.logged, "unanswered": self.unanswered,
                "verdicts": self.verdicts, "marked_wrong": self.marked_wrong, "marked_right": self.marked_right,
                "threshold": round(self.threshold, 4), "threshold_source": self.threshold_source,
                "groups": [g.to_dict() for g in self.groups]}


def group_by_meaning(vectors: np.ndarray, counts: list[int], threshold: float) -> list[list[int]]:
    """Greedy leader grouping of unit vectors: the most counted ungrouped row leads, takes rows at cosine >= threshold.

    group_by_meaning(np.eye(3)[[0, 0, 1]], [1, 2, 1], 0.9) -> [[1, 0], [2]]
    """
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    similarity = vectors @ vectors.T if len(vectors) else np.zeros((0, 0))
    taken = np.zeros(len(counts), dtype=bool)
    groups = []
    for leader in order:
        if taken[leader]:
            continue
        members = [leader] + [i for i in order if i != leader and not taken[i] and similarity[leader, i] >= threshold]
        taken[members] = True
        groups.append(members)
    return groups


def missed_questions(store: FeedbackStore) -> tuple[list[Missed], dict]:
    """Distinct missed questions (first phrasing seen, by normalized text) and the report's counts."""
    def same(text: str) -> str:
        return normalize_text(text).casefold()

    logged, verdicts = store.logged(), store.verdicts()
    good = {same(v.question) for v in verdicts if v.verdict in GOOD}
    wrong = Counter(same(v.question) for v in verdicts if v.verdict == "down" and same(v.question) not in good)
    unanswered = Counter(same(q.question) for q in logged if not q.answered and same(q.question) not in good)
    phrasing: dict[str, str] = {}
    for text in [q.question for q in logged if not q.answered] + [v.question for v in verdicts]:
        phrasing.setdefault(same(text), normalize_text(text))
    missed = [Missed(phrasing[key], unanswered[key], wrong[key]) for key in dict.fromkeys([*unanswered, *wrong])]
    counts = {"logged": len(logged), "unanswered": sum(1 for q in logged if not q.answered), "verdicts": len(verdicts),
              "marked_wrong": len(wrong), "marked_right": len(good)}
    return missed, counts


def measured_threshold(searcher: Searcher) -> tuple[float, str]:
    """(cosine, how it was found): when two questions count as one need, from the index's own groups."""
    rows = searcher.db.execute("SELECT text, group_key FROM documents WHERE group_key IN (SELECT group_key FROM "
                               "documents WHERE group_key IS NOT NULL GROUP BY group_key HAVING count(*) > 1 "
                               "ORDER BY group_key LIMIT ?)", [SAMPLE_GROUPS]).fetchall()
    if len(rows) < 4:
        return THRESHOLD, "default (the index has no groups to measure on)"
    vectors = searcher.embed([text for text, _ in rows])
    groups = np.asarray([group for _, group in rows])
    similarity = vectors @ vectors.T
    upper = np.triu(np.ones_like(similarity, dtype=bool), k=1)
    same = similarity[upper & (groups[:, None] == groups[None, :])]
    other = similarity[upper & (groups[:, None] != groups[None, :])]
    threshold = float(np.percentile(same, 25))
    if len(other):
        threshold = max(threshold, float(np.percentile(other, 99)))
    return threshold, f"measured on {len(same)} pairs of phrasings in the index's groups"


def feedback_report(folder: str | Path, *, threshold: float | None = None, encoder=None) -> FeedbackReport:
    """Group the missed questions of `folder` by meaning, most asked first. `threshold`: default measured."""
    if threshold is not None and not 0 < threshold <= 1:
        raise UsageError(f"--threshold {threshold} must be in (0, 1]")
    store = FeedbackStore(folder, readonly=True)
    try:
        missed, counts = missed_questions(store)
    finally:
        store.close()
    groups: list[MissedGroup] = []
    searcher = Searcher(folder, encoder=encoder)
    try:
        source = "given"
        if threshold is None:
            threshold, source = measured_threshold(searcher)
        vectors = searcher.embed([m.question for m in missed]) if missed else np.zeros((0, 1), dtype=np.float32)
        for members in group_by_meaning(vectors, [m.count for m in missed], threshold):
            leader = missed[members[0]].question
            hits = searcher.search(leader, 1, mode="dense", min_score=float("-inf"))
            closest = hits[0] if hits else None
            groups.append(MissedGroup(tuple(missed[i] for i in members), closest and closest.key,
                                      closest and closest.text, closest and closest.score))
    finally:
        searcher.close()
    groups.sort(key=lambda g: -g.count)
    return FeedbackReport(str(folder), threshold=threshold, threshold_source=source, groups=tuple(groups), **counts)


def labelled_from_feedback(folder: str | Path) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """(queries, qrels) in BEIR form from the answers agents marked right (up, or right on a lower answer).

    A key counts as relevant to a question when it got more good verdicts than "down" ones.
    """
    store = FeedbackStore(folder, readonly=True)
    try:
        verdicts = store.verdicts()
    finally:
        store.close()
    votes: dict[str, Counter] = defaultdict(Counter)
    phrasing: dict[str, str] = {}
    for v in verdicts:
        same = normalize_text(v.question).casefold()
        phrasing.setdefault(same, normalize_text(v.question))
        votes[same][v.key] += 1 if v.verdict in GOOD else -1
    queries, qrels = {}, {}
    for number, (same, tally) in enumerate(votes.items(), start=1):
        relevant = {key: 1.0 for key, vote in tally.items() if vote > 0}
        if relevant:
            queries[f"feedback-{number}"] = phrasing[same]
            qrels[f"feedback-{number}"] = relevant
    if not qrels:
        raise BertdexError(f"{folder}: no answer is marked right in the feedback yet: nothing to tune on "
                           "(agents mark answers with the thumbs up or 'this one was right' on the page, or POST /feedback)")
    return queries, qrels

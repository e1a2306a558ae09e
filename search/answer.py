"""One question's answer as every door shows it (`bertdex query --json`, HTTP POST /search, the page).

An `Answer` holds the hits past the cut, each with its band; the cut and where it came from; and,
when nothing passed, the closest miss and why: the hits fell below the cut, a filter matched no
entry, or nothing matched at all. It is built from the hits of a search made with no cut
(`min_score=-inf`), so the closest miss is known. This module neither ranks nor reads the index.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.searcher import Hit
from search.server.answers import band, cut_source

# why a question got no answer: the machine-readable `reason`; `why` is the line a person reads
BELOW_CUT = "below_cut"
FILTER_MATCHED_NOTHING = "filter_matched_nothing"
NOTHING_FOUND = "nothing_found"


@dataclass(frozen=True)
class Answer:
    """Answer(question, hits past the cut, cut, cut_source, mode, closest miss, reason, why, below_cut)."""

    question: str
    hits: tuple[Hit, ...]
    cut: float | None
    cut_source: str | None
    mode: str
    closest: Hit | None = None
    reason: str | None = None  # None when answered; else BELOW_CUT, FILTER_MATCHED_NOTHING or NOTHING_FOUND
    why: str | None = None
    below_cut: int = 0  # of the k asked, how many fell below the cut

    @property
    def answered(self) -> bool:
        return bool(self.hits)

    def band(self, hit: Hit) -> str | None:
        return band(hit.score, self.cut, self.mode)

    def to_dict(self) -> dict:
        """The JSON shape both doors print: hits (and the closest miss) carry their band."""
        def shown(hit: Hit) -> dict:
            return {**hit.to_dict(), "band": self.band(hit)}

        return {"question": self.question, "answered": self.answered, "hits": [shown(hit) for hit in self.hits],
                "cut": self.cut, "cut_source": self.cut_source, "mode": self.mode, "below_cut": self.below_cut,
                "closest": shown(self.closest) if self.closest else None, "reason": self.reason, "why": self.why}


def answer(question: str, hits: list[Hit], *, cut: float | None, cut_source: str | None, mode: str,
           filtered: bool = False, filter_problem: str | None = None) -> Answer:
    """The answer from `hits` searched without a cut (best first): those at or above `cut` are kept.

    `filtered`: the search had filters; `filter_problem`: why no entry can pass them (search.filters),
    when known. answer("refund?", [Hit(1, "a", 0.3, ...)], cut=0.5, ...) -> unanswered, closest "a", below_cut.
    """
    kept = tuple(hit for hit in hits if cut is None or hit.score >= cut)
    below = len(hits) - len(kept)
    if kept:
        return Answer(question, kept, cut, cut_source, mode, below_cut=below)
    if hits:
        closest = hits[0]
        why = (f"no good answer: the closest entry ({closest.key}) scores {closest.score:.4f}, below the cut "
               f"{cut:.4f}" + (f" ({cut_source})" if cut_source else ""))
        return Answer(question, (), cut, cut_source, mode, closest, BELOW_CUT, why, below)
    if filtered:
        why = filter_problem or "no entry that passes the filter is close to this question"
        return Answer(question, (), cut, cut_source, mode, None, FILTER_MATCHED_NOTHING, why)
    why = "no entry shares a word with the question" if mode == "keyword" else "the index has no entries"
    return Answer(question, (), cut, cut_source, mode, None, NOTHING_FOUND, why)


def search_answers(searcher, questions: list[str], k: int = 5, *, mode: str | None = None,
                   min_score: float | None = None, weight: float | None = None, filters: dict | None = None,
                   long_questions: str | None = None) -> list[Answer]:
    """Each question's Answer from `searcher` (one batch): searched without a cut, then cut at `min_score`,
    else at the index's calibrated cut for the mode. (The server does the same through its batcher.)"""
    from search.filters import filter_problem

    results = searcher.search_many(questions, k, mode=mode, min_score=float("-inf"), weight=weight,
                                   filters=filters or None, long_questions=long_questions)
    settings = searcher.manifest.settings
    used = mode or settings.search.mode
    cut = searcher.cut_for(used, min_score)
    source = cut_source(settings.search, min_score, cut)
    problem = filter_problem(searcher.db, filters) if filters and not all(results) else None
    return [answer(question, hits, cut=cut, cut_source=source, mode=used, filtered=bool(filters),
                   filter_problem=problem) for question, hits in zip(questions, results)]

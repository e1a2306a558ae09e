"""Calibrate the "no good answer" cut (min_score) from example questions, and store it in the index.

Examples: questions the desk must not answer (out of scope; any answer is wrong) and questions it
should answer (labelled queries, whose top answer is right or wrong by the qrels, or plain in-scope
questions, taken as answerable). Each gets the top score of the index's own search mode. A cut
answers the questions scoring at or above it. The chosen cut is, with a target precision, the one
answering the most right answers while precision (right / answered) stays at or above the target;
otherwise the one routing the most questions correctly (right answers kept, wrong ones refused),
placed midway between neighbouring scores. With out-of-scope examples only, it sits just above
the highest of them. With one side missing the result carries a warning (a cut from out-of-scope
examples alone cannot know what it refuses of the answers); a cut that refuses more than
MAX_REFUSED_RIGHT of the right answers it was given is refused (nothing stored) unless `allow_refusing`.
Without calibration an index has the cut it makes from its own collection (indexer.store.offtopic).
This module does not tune the ranking: see `search.quality.tune`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from indexer.errors import BertdexError, UsageError
from indexer.ingest.readers import read_questions  # noqa: F401 (kept importable from here)
from indexer.ingest.reembed import store_search_settings
from indexer.store.settings import SearchSettings
from search.searcher import Searcher

MARGIN = 1e-6
MAX_REFUSED_RIGHT = 0.05  # a calibrated cut may refuse at most this share of the right answers it was given


@dataclass(frozen=True)
class Calibration:
    """The chosen cut and what it does on the examples."""

    folder: str
    mode: str
    min_score: float
    rule: str
    in_scope: int
    out_of_scope: int
    answered_right: int
    answered_wrong: int
    refused_right: int
    refused_wrong: int
    stored: bool
    # (top score, top answer right) per example, out-of-scope ones first: what `--plot` draws
    examples: tuple[tuple[float, bool], ...] = field(default=(), repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def precision(self) -> float:
        answered = self.answered_right + self.answered_wrong
        return self.answered_right / answered if answered else 1.0

    @property
    def accuracy(self) -> float:
        total = self.answered_right + self.answered_wrong + self.refused_right + self.refused_wrong
        return (self.answered_right + self.refused_wrong) / total if total else 0.0

    def to_dict(self) -> dict:
        return {"folder": self.folder, "mode": self.mode, "min_score": round(self.min_score, 6), "rule": self.rule,
                "in_scope": self.in_scope, "out_of_scope": self.out_of_scope,
                "answered_right": self.answered_right, "answered_wrong": self.answered_wrong,
                "refused_right": self.refused_right, "refused_wrong": self.refused_wrong,
                "precision": round(self.precision, 6), "routing_accuracy": round(self.accuracy, 6),
                "stored": self.stored, "warnings": list(self.warnings)}


def calibrate_index(folder: str | Path, *, out_of_scope: list[str] = (), in_scope: list[str] = (),
                    queries: dict | None = None, qrels: dict | None = None, target_precision: float | None = None,
                    store: bool = True, encoder=None, allow_refusing: bool = False) -> Calibration:
    """Score the examples in the index's search mode, choose the cut, store it (unless `store` is False).

    Raises BertdexError when the cut would refuse more than MAX_REFUSED_RIGHT of the right answers given
    (unless `allow_refusing`): nothing is stored then.
    """
    if target_precision is not None and not 0 < target_precision <= 1:
        raise UsageError(f"--target-precision {target_precision} must be in (0, 1]")
    searcher = Searcher(folder, encoder=encoder)
    try:
        mode = searcher.manifest.settings.search.mode
        generation = searcher.manifest.generation
        before = searcher.manifest.settings.search
        examples = _examples(searcher, list(out_of_scope), list(in_scope), queries, qrels)
    finally:
        searcher.close()
    if len(examples) == len(out_of_scope) and target_precision is None:
        wrong = [score for score, _ in examples if math.isfinite(score)]
        cut = (max(wrong) + MARGIN) if wrong else 0.0
        rule = "just above the best-scoring out-of-scope example (no in-scope examples given)"
    else:
        cut, rule = choose_cut(examples, target_precision, None if allow_refusing else MAX_REFUSED_RIGHT)
    n_out = len(out_of_scope)
    warnings = _warnings(len(examples) - n_out, n_out, before)
    result = Calibration(str(folder), mode, cut, rule, len(examples) - n_out, n_out, stored=False,
                         examples=tuple(examples), warnings=tuple(warnings), **_counts(examples, cut))
    right = result.answered_right + result.refused_right
    if right and result.refused_right / right > MAX_REFUSED_RIGHT and not allow_refusing:
        raise BertdexError(f"the cut {cut:.4f} would refuse {result.refused_right} of the {right} right answers given "
                           f"({result.refused_right / right:.0%}, more than {MAX_REFUSED_RIGHT:.0%}): nothing stored. "
                           "Give more in-scope examples or a lower --target-precision, or --allow-refusing to store it anyway")
    if store:
        summary = {name: value for name, value in result.to_dict().items() if name not in ("folder", "stored", "warnings")}
        provenance = {"source": "calibrated", "labelled": len(examples), "in_scope": result.in_scope, "out_of_scope": n_out}
        store_search_settings(folder, replace(_current_search(folder), mode=mode, min_score=cut, calibration=summary,
                                              cut=provenance),
                              expected_generation=generation)
        result = Calibration(**{**result.__dict__, "stored": True})
    return result


def _warnings(in_scope: int, out_of_scope: int, before) -> list[str]:
    """What the examples cannot tell: a missing side."""
    found = []
    if not in_scope:
        found.append("no in-scope examples were given: the cut is placed above every out-of-scope example without "
                     "knowing how many right answers it refuses; add --in-scope questions or --queries/--qrels")
    if not out_of_scope:
        found.append("no out-of-scope examples were given: the cut is placed from in-scope examples alone and may "
                     "answer questions the desk does not cover; add --out-of-scope questions")
    if found and (before.cut or {}).get("source") == "collection" and before.min_score is not None:
        found.append(f"the cut made from the collection was {before.min_score:.4f}")
    return found


def choose_cut(examples: list[tuple[float, bool]], target_precision: float | None,
               max_refused: float | None = None) -> tuple[float, str]:
    """The cut for (top score, is the top answer right) examples; -inf scores (no hit) are always refused.
    `max_refused`: only cuts refusing at most this share of the right answers are candidates.

    choose_cut([(0.9, True), (0.8, True), (0.3, False)], None) -> (0.55, 'most questions routed right ...')
    """
    scores = sorted({score for score, _ in examples if math.isfinite(score)})
    if not scores:
        raise BertdexError("no example question got any answer: nothing to calibrate on")
    cuts = [scores[0] - MARGIN] + [(a + b) / 2 for a, b in zip(scores, scores[1:])] + [scores[-1] + MARGIN]
    rows = [(cut, _counts(examples, cut)) for cut in cuts]
    right = sum(1 for score, ok in examples if ok and math.isfinite(score))
    if max_refused is not None and right:
        rows = [(cut, c) for cut, c in rows if c["refused_right"] <= max_refused * right + 1e-9]
    bound = f", refusing at most {max_refused:.0%} of the right answers" if max_refused is not None and right else ""
    if target_precision is not None:
        feasible = [(cut, c) for cut, c in rows if _precision(c) >= target_precision - 1e-12 and c["answered_right"]]
        if not feasible:
            best = max((_precision(c) for _, c in rows if c["answered_right"] + c["answered_wrong"]), default=0.0)
            raise BertdexError(f"no cut reaches precision {target_precision:.2f} on these examples{bound} (best: "
                               f"{best:.2f}); lower --target-precision" + (", or --allow-refusing" if bound else ""))
        most = max(c["answered_right"] for _, c in feasible)
        cut = max(cut for cut, c in feasible if c["answered_right"] == most)
        return cut, f"most right answers at precision >= {target_precision:.2f}{bound}"
    best = max(c["answered_right"] + c["refused_wrong"] for _, c in rows)
    tied = [cut for cut, c in rows if c["answered_right"] + c["refused_wrong"] == best]
    return tied[len(tied) // 2], f"most questions routed right (right answers kept, wrong ones refused){bound}"


def _examples(searcher: Searcher, out_of_scope: list[str], in_scope: list[str], queries, qrels) -> list[tuple[float, bool]]:
    """(top score, right?) per example: out-of-scope first, then in-scope, then labelled queries."""
    from search.quality.evaluate import keys_for_metrics, labelled_queries

    labelled = labelled_queries(queries, qrels)[0] if queries is not None and qrels is not None else []
    texts = out_of_scope + in_scope + [text for _, text, _ in labelled]
    if not out_of_scope and not in_scope and not labelled:
        raise BertdexError("nothing to calibrate on: give out-of-scope questions, in-scope questions, or --queries and --qrels")
    results = searcher.search_many(texts, 1, min_score=float("-inf")) if texts else []
    examples = []
    for i, hits in enumerate(results):
        score = hits[0].score if hits else float("-inf")
        if i < len(out_of_scope):
            right = False
        elif i < len(out_of_scope) + len(in_scope):
            right = True
        else:
            relevance = labelled[i - len(out_of_scope) - len(in_scope)][2]
            right = bool(hits) and any(relevance.get(key, 0) > 0 for key in
                                       keys_for_metrics([(hits[0].key, hits[0].variants)], relevance))
        examples.append((score, right))
    return examples


def _counts(examples: list[tuple[float, bool]], cut: float) -> dict:
    counts = {"answered_right": 0, "answered_wrong": 0, "refused_right": 0, "refused_wrong": 0}
    for score, right in examples:
        answered = score >= cut
        counts[("answered_" if answered else "refused_") + ("right" if right else "wrong")] += 1
    return counts


def _precision(counts: dict) -> float:
    answered = counts["answered_right"] + counts["answered_wrong"]
    return counts["answered_right"] / answered if answered else 1.0


def _current_search(folder) -> SearchSettings:
    from search.searcher import open_manifest

    return open_manifest(folder).settings.search


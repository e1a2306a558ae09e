"""Measure every tuning candidate on held-out questions, ranking exactly as `Searcher` does but in memory.

Candidates: hidden layer (upper half of the model) x pooling for the dense side, keyword alone, and
hybrid fusion x dense weight for the current and the best dense recipes; then the same for each other
bundled model (its own trained layer, every pooling: `measure_all(..., model=name)`), whose
candidates carry the model's name; and the index's recipe paired with a companion model at several
shares (`measure_pairs`), dense and hybrid. Entries and questions are
embedded by the index's own paths (`indexer.ingest.embedding`: same windows, same long-question
handling), every layer and pooling from one pass; the candidate pools, exclusions and group collapse
are `search.collapse`'s. Each trial keeps its per-question MRR@10 and nDCG@10 for choosing out of
sample (`search.quality.choose`). This module does not choose or store anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from indexer.embed.recipe import joined
from indexer.embed.pair import companion_vectors
from indexer.ingest.embedding import Vectors, embed_entries, embed_questions, question_texts
from search import keyword
from search.collapse import DENSE_PER_ENTRY, POOL, collapse, without
from search.quality.evaluate import keys_for_metrics
from search.quality.heldout import HeldOut
from search.quality.metrics import mean_metrics, query_metrics

POOLINGS = ("mean", "max", "cls", "mean-max")
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
HYBRID_RECIPES = 2  # best dense recipes also tried in hybrid (plus the current one)
SHARES = (0.3, 0.5, 0.7)  # a companion model's part of the score, tried by tune


@dataclass(frozen=True)
class Candidate:
    layer: int
    pooling: str
    mode: str
    weight: float | None = None
    fusion: str | None = None
    model: str | None = None  # another bundled model than the index's (entries re-embedded with it)
    companion: str | None = None  # a model scoring with the index's (indexer.embed.pair), with `share` of the score
    share: float | None = None

    def label(self) -> str:
        if self.mode == "keyword":
            return "keyword (BM25)"
        model = " with a learned map" if self.model == "map" else (f" of {self.model}" if self.model else "")
        dense = f"{self.pooling} of layer {self.layer}{model}"
        if self.companion:
            dense += f" + {self.share:.1f} x {self.companion}"
        return dense if self.mode == "dense" else f"hybrid {self.fusion} w={self.weight:.1f}, {dense}"


@dataclass(frozen=True)
class Trial:
    candidate: Candidate
    metrics: dict
    per_query: np.ndarray = field(repr=False, compare=False, default=None)  # MRR@10 per held-out question
    per_query_ndcg: np.ndarray = field(repr=False, compare=False, default=None)


def keyword_lists(db, heldout: list[HeldOut]) -> list[list]:
    """Per question: the keyword side's candidate pool, its own entries removed (as Searcher._rank)."""
    return [without(keyword.search(db, q.text, POOL + len(q.exclude)), q.exclude)[:POOL] for q in heldout]


def tried_fusions(search) -> tuple[str, ...]:
    """The hybrid fusions tune tries: score (the default), and the index's own where it is hybrid with another.

    Rank and cosine fusion never came first on the shared sets (bench/quality.py: every set's five best
    candidates are dense or score fusion), and each candidate tried adds to the luck a choice can have on
    few questions: with them, deepset-covid-qsim's move to e5 hybrid failed the gate on both halves.
    """
    return ("score",) + ((search.fusion,) if search.mode == "hybrid" and search.fusion != "score" else ())


def measure_all(encoder, manifest, documents: list[dict], heldout: list[HeldOut], words: list[list],
                layers: list[int] | None, passages=None, model: str | None = None,
                fusions: tuple[str, ...] = keyword.FUSIONS) -> list[Trial]:
    """Dense for every layer x pooling, keyword, then hybrid `fusions` for the current and best dense recipes.

    `passages`: the entries' vectors from an earlier call (same layers), to measure another question set.
    `model`: measuring another model (manifest.recipe is then its recipe): its candidates are named by
    it and keyword, the same for every model, is left to the index's own.
    """
    recipe, settings = manifest.recipe, manifest.settings
    layers = tuned_layers(encoder, recipe, layers)
    passages = passages or entry_vectors(encoder, manifest, documents, layers)
    asked = embed_questions(encoder, recipe, settings, [q.text for q in heldout], layers=layers)
    judge = _Judge(documents, heldout)
    dense_lists, trials = {}, []
    for layer in layers:
        for pooling in POOLINGS:
            dense_lists[(layer, pooling)] = _dense_lists(passages, asked, layer, pooling, heldout)
            trials.append(judge.trial(Candidate(layer, pooling, "dense", model=model), dense_lists[(layer, pooling)]))
    if model is None:
        trials.append(judge.trial(Candidate(recipe.layer, recipe.pooling, "keyword"), words))
    by_dense = sorted((t for t in trials if t.candidate.mode == "dense"), key=order, reverse=True)
    recipes = [(recipe.layer, recipe.pooling)] + [(t.candidate.layer, t.candidate.pooling) for t in by_dense]
    for layer, pooling in list(dict.fromkeys(recipes))[: HYBRID_RECIPES + 1]:
        trials += _hybrids(judge, Candidate(layer, pooling, "dense", model=model), dense_lists[(layer, pooling)], words,
                           fusions)
    return trials


def measure_pairs(encoder, manifest, documents: list[dict], heldout: list[HeldOut], words: list[list], passages,
                  companion, shares: tuple[float, ...] = SHARES,
                  fusions: tuple[str, ...] = keyword.FUSIONS) -> list[Trial]:
    """The index's recipe (manifest.recipe, one model; `encoder`, and `passages` its entry vectors from
    entry_vectors) paired with `companion` (search.quality.tune.OtherModel: encoder, manifest, passages)
    at each of `shares`: dense and every hybrid fusion of `fusions` x weight.

    What a paired encoder (indexer.embed.pair) would store and ask: the companion's vector of each of the
    first model's windows, joined per share. A window that is a whole entry the companion also read whole
    reuses its vector of that entry (the same token ids), so tune embeds little more than for one model.
    """
    recipe, settings, other = manifest.recipe, manifest.settings, companion.manifest.recipe
    key = (recipe.layer, recipe.pooling)
    texts = {d["id"]: d["text"] for d in documents}
    theirs = _companion_entries(companion, texts, passages.owners, passages.spans)
    asked = embed_questions(encoder, recipe, settings, [q.text for q in heldout])
    asked_texts = question_texts(encoder, settings, [q.text for q in heldout])
    asked_theirs = companion_vectors(companion.encoder, other, asked_texts, asked.owners, asked.spans, "query")
    judge, trials = _Judge(documents, heldout), []
    for share in shares:
        stored = Vectors({key: joined(passages.of(*key), theirs, share)}, passages.owners, passages.spans)
        questions = Vectors({key: joined(asked.of(*key), asked_theirs, share)}, asked.owners, asked.spans)
        dense = _dense_lists(stored, questions, *key, heldout)
        candidate = Candidate(recipe.layer, recipe.pooling, "dense", companion=other.model, share=share)
        trials += [judge.trial(candidate, dense)] + _hybrids(judge, candidate, dense, words, fusions)
    return trials


def _companion_entries(companion, texts: dict, owners: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """The companion's vector of each window (owners: entry ids) of the first model, reusing its own
    vectors of entries both read whole."""
    other = companion.manifest.recipe
    theirs_all = companion.passages.of(other.layer, other.pooling)
    rows, counts = {}, {}
    for row, (owner, (start, end)) in enumerate(zip(companion.passages.owners.tolist(), companion.passages.spans.tolist())):
        counts[owner] = counts.get(owner, 0) + 1
        if (start, end) == (0, len(texts[owner])):
            rows[owner] = row
    out = np.zeros((len(owners), theirs_all.shape[1]), dtype=np.float32)
    rest = []
    for i, (owner, (start, end)) in enumerate(zip(owners.tolist(), spans.tolist())):
        if (start, end) == (0, len(texts[owner])) and counts.get(owner) == 1 and owner in rows:
            out[i] = theirs_all[rows[owner]]
        else:
            rest.append(i)
    if rest:
        rest = np.asarray(rest)
        out[rest] = companion_vectors(companion.encoder, other, texts, owners[rest], spans[rest], "passage")
    return out


def _hybrids(judge, dense: Candidate, lists: list[list], words: list[list], fusions: tuple[str, ...]) -> list[Trial]:
    """Every fusion x weight of the dense candidate's lists with the keyword side."""
    trials = []
    for fusion in fusions:
        for weight in WEIGHTS:
            fused = [keyword.fuse(d, w, weight, fusion) for d, w in zip(lists, words)]
            trials.append(judge.trial(replace(dense, mode="hybrid", weight=weight, fusion=fusion), fused))
    return trials


def plain(candidate: Candidate, recipe) -> bool:
    """A plain setting of `recipe` (the index's, or another model's as it comes): dense, keyword, or
    hybrid with score fusion at 0.5 (a pair of models never is)."""
    if (candidate.layer, candidate.pooling) != (recipe.layer, recipe.pooling) or candidate.companion:
        return False
    return candidate.mode != "hybrid" or (candidate.fusion == "score" and abs(candidate.weight - 0.5) < 1e-9)


def tuned_layers(encoder, recipe, layers: list[int] | None) -> list[int]:
    return sorted({*(layers or range((encoder.num_layers + 1) // 2, encoder.num_layers + 1)), recipe.layer})


def entry_vectors(encoder, manifest, documents: list[dict], layers: list[int]):
    """Every entry's window vectors for each layer and pooling; owners are document ids."""
    embedded = embed_entries(encoder, manifest.recipe, manifest.settings, [d["text"] for d in documents], layers=layers)
    ids = np.asarray([d["id"] for d in documents], dtype=np.int64)
    return type(embedded)(embedded.by_recipe, ids[embedded.owners], embedded.spans, embedded.truncated)


def order(trial: Trial) -> tuple[float, float]:
    return (round(trial.metrics["mrr@10"], 9), round(trial.metrics["ndcg@10"], 9))


def _dense_lists(passages, asked, layer: int, pooling: str, heldout: list[HeldOut]) -> list[list]:
    """Per question: (document id, cosine, passage) for the top passages, best first, as Searcher._dense.

    A question embedded as several windows scores each passage by its best window.
    """
    matrix, rows = passages.of(layer, pooling), asked.of(layer, pooling)
    order_rows = np.argsort(asked.owners, kind="stable")
    starts = np.searchsorted(asked.owners[order_rows], np.arange(len(heldout) + 1))
    lists = []
    for first in range(0, len(heldout), 512):
        last = min(first + 512, len(heldout))
        block = order_rows[starts[first] : starts[last]]
        scores = rows[block] @ matrix.T
        if len(block) != last - first:  # windowed questions: best window per passage
            scores = np.maximum.reduceat(scores, starts[first:last] - starts[first], axis=0)
        for row, question in zip(scores, heldout[first:last]):
            n = min(POOL + len(question.exclude) * DENSE_PER_ENTRY, len(row))
            top = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
            top = top[np.lexsort((top, -row[top]))]
            ranked = [(int(passages.owners[p]), float(row[p]), int(p)) for p in top]
            lists.append(without(ranked, question.exclude)[:POOL])
    return lists


class _Judge:
    """Turns ranked (document id, score, passage) lists into metrics, collapsing groups as Searcher does."""

    def __init__(self, documents: list[dict], heldout: list[HeldOut]):
        self.heldout = heldout
        self.documents = {d["id"]: d for d in documents}
        self.groups = {d["id"]: d["group"] for d in documents}
        self.members: dict[str, tuple[str, ...]] = {}
        for doc in documents:
            if doc["group"] is not None:
                self.members[doc["group"]] = self.members.get(doc["group"], ()) + (doc["key"],)

    def trial(self, candidate: Candidate, lists: list[list]) -> Trial:
        per_query = [query_metrics(self._keys(ranked, q), q.relevance) for ranked, q in zip(lists, self.heldout)]
        return Trial(candidate, mean_metrics(per_query), np.asarray([m["mrr@10"] for m in per_query]),
                     np.asarray([m["ndcg@10"] for m in per_query]))

    def _keys(self, ranked: list, question: HeldOut) -> list[str]:
        hits = []
        for doc_id, _, _ in collapse(ranked, self.groups, limit=10):
            doc = self.documents[doc_id]
            # a hit stands for its group; the held-out entry itself is never in its relevance
            hits.append((doc["key"], self.members[doc["group"]] if doc["group"] is not None else ()))
        return keys_for_metrics(hits, question.relevance)

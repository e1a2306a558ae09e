"""Pick, per collection, the recipe and search mode that answer its questions best, and store them in the index.

The search space is small: hidden layer (upper half of the model) x pooling for the dense side,
keyword alone, and hybrid fusion (score or rank) x dense weight for the best dense recipes. One
forward pass with all hidden states embeds the collection for every layer and pooling at once.

Held-out questions come from labelled queries (BEIR queries + qrels) or, without labels, from the
FAQ itself: each entry of a group of several phrasings asks for the other members of its group;
the entry itself, and any entry with exactly its text, is removed from its own ranking (no leakage).
The winner maximizes MRR@10, then nDCG@10; on a tie the earlier candidate wins, and the index's
current setting comes first, so nothing changes without a measured gain. This module ranks exactly
as `Searcher` does (same pool sizes, fusion and group collapse) but with all vectors in memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from indexer.embed.encoder import Encoder, _length_batches
from indexer.errors import BertdexError
from indexer.store.keywords import normalize_text, scheme_of
from indexer.embed.pooling import normalize, pool_cls, pool_max, pool_mean
from indexer.store.folder import check_index_folder, connect, read_manifest
from search import keyword
from search.quality.metrics import mean_metrics, query_metrics
from indexer.ingest.reembed import store_search_settings, reembed_index

POOLINGS = ("mean", "max", "cls", "mean-max")
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FUSIONS = keyword.FUSIONS
POOL = 50          # candidates per side, as Searcher._rank for k <= 10
HYBRID_RECIPES = 2  # best dense recipes also tried in hybrid (plus the current one)
MAX_QUERIES = 2000


@dataclass(frozen=True)
class Candidate:
    layer: int
    pooling: str
    mode: str
    weight: float | None = None
    fusion: str | None = None

    def label(self) -> str:
        if self.mode == "keyword":
            return "keyword (BM25)"
        dense = f"{self.pooling} of layer {self.layer}"
        return dense if self.mode == "dense" else f"hybrid {self.fusion} w={self.weight:.1f}, {dense}"


@dataclass(frozen=True)
class Trial:
    candidate: Candidate
    metrics: dict
    per_query: np.ndarray = field(repr=False, compare=False, default=None)  # MRR@10 per held-out query


@dataclass(frozen=True)
class TuneReport:
    """What was tried (best first), what won, what was there before, and what was stored."""

    folder: str
    source: str
    queries: int
    trials: list[Trial]
    best: Trial
    current: Trial
    heldout_mrr: float  # 2-fold: choose on one half of the queries, measure on the other
    recipe_changed: bool
    stored: bool
    seconds: float

    def to_dict(self) -> dict:
        def row(trial: Trial) -> dict:
            c = trial.candidate
            return {"mode": c.mode, "layer": c.layer, "pooling": c.pooling, "weight": c.weight, "fusion": c.fusion,
                    **{name: round(value, 6) for name, value in trial.metrics.items()}}

        return {"folder": self.folder, "source": self.source, "queries": self.queries, "best": row(self.best),
                "current": row(self.current), "heldout_mrr@10": round(self.heldout_mrr, 6),
                "recipe_changed": self.recipe_changed, "stored": self.stored, "seconds": round(self.seconds, 1),
                "trials": [row(t) for t in self.trials]}


@dataclass(frozen=True)
class HeldOut:
    """One tuning question: its text, what counts as relevant, and document ids it must not see."""

    text: str
    relevance: dict
    exclude: frozenset = frozenset()


def tune_index(folder: str | Path, *, queries: dict | None = None, qrels: dict | None = None,
               group_field: str | None = None, store: bool = True, encoder: Encoder | None = None,
               max_queries: int = MAX_QUERIES, layers: list[int] | None = None) -> TuneReport:
    """Try the search space on `folder`'s held-out questions; store the winner unless `store` is False."""
    started = time.perf_counter()
    folder = check_index_folder(Path(folder))
    manifest, documents, heldout, source, words = _read_index(folder, queries, qrels, group_field, max_queries)
    recipe = manifest.recipe
    trials = _try_all(_full_encoder(encoder, recipe), manifest, documents, heldout, words, layers)
    current = _current_candidate(trials, recipe, manifest.settings.get("search", {})) \
        or Candidate(recipe.layer, recipe.pooling, "dense")
    ordered = sorted(trials, key=lambda t: (t.candidate != current,))  # current first: it wins ties
    best = max(ordered, key=_order)
    changed = (best.candidate.layer, best.candidate.pooling) != (recipe.layer, recipe.pooling) \
        and best.candidate.mode != "keyword"
    if store:
        _store(folder, manifest, best, source, len(heldout), changed, keep_cut=best.candidate == current)
    return TuneReport(str(folder), source, len(heldout), sorted(trials, key=_order, reverse=True), best,
                      next(t for t in trials if t.candidate == current), _two_fold(ordered), changed, store,
                      time.perf_counter() - started)


def _read_index(folder: Path, queries, qrels, group_field, max_queries):
    """In one read transaction: manifest, documents, held-out questions and their keyword rankings."""
    db = connect(folder, readonly=True)
    try:
        db.execute("BEGIN")
        manifest = read_manifest(db, folder)
        documents = _documents(db)
        heldout, source = _heldout(documents, queries, qrels, group_field, max_queries)
        terms = scheme_of(manifest.settings)
        words = [_without(keyword.search(db, q.text, POOL + len(q.exclude), terms), q.exclude)[:POOL] for q in heldout]
        db.execute("COMMIT")
    finally:
        db.close()
    return manifest, documents, heldout, source, words


def _try_all(encoder: Encoder, manifest, documents: list[dict], heldout: list[HeldOut], words: list[list],
             layers: list[int] | None) -> list[Trial]:
    """Dense for every layer x pooling, keyword, then hybrid fusions for the current and best dense recipes."""
    recipe, settings = manifest.recipe, manifest.settings
    layers = sorted({*(layers or range((encoder.num_layers + 1) // 2, encoder.num_layers + 1)), recipe.layer})
    passages = _all_layer_vectors(encoder, [d["text"] for d in documents], layers, recipe.exclude_special,
                                  settings.get("window", True), settings.get("stride", 0))
    passages.owners = np.asarray([d["id"] for d in documents], dtype=np.int64)[passages.owners]  # -> document ids
    asked = _all_layer_vectors(encoder, [normalize_text(q.text) for q in heldout], layers, recipe.exclude_special,
                               False, 0)
    judge = _Judge(documents, heldout)
    dense_lists, trials = {}, []
    for layer in layers:
        for pooling in POOLINGS:
            dense_lists[(layer, pooling)] = _dense_lists(passages, asked, layer, pooling, heldout)
            trials.append(judge.trial(Candidate(layer, pooling, "dense"), dense_lists[(layer, pooling)]))
    trials.append(judge.trial(Candidate(recipe.layer, recipe.pooling, "keyword"), words))
    by_dense = sorted((t for t in trials if t.candidate.mode == "dense"), key=_order, reverse=True)
    recipes = [(recipe.layer, recipe.pooling)] + [(t.candidate.layer, t.candidate.pooling) for t in by_dense]
    for layer, pooling in list(dict.fromkeys(recipes))[: HYBRID_RECIPES + 1]:
        for fusion in FUSIONS:
            for weight in WEIGHTS:
                fused = [keyword.fuse(d, w, weight, fusion) for d, w in zip(dense_lists[(layer, pooling)], words)]
                trials.append(judge.trial(Candidate(layer, pooling, "hybrid", weight, fusion), fused))
    return trials


def _order(trial: Trial) -> tuple[float, float]:
    return (round(trial.metrics["mrr@10"], 9), round(trial.metrics["ndcg@10"], 9))


def _current_candidate(trials: list[Trial], recipe, tuned: dict) -> Candidate | None:
    """The trial matching the index's stored search settings, if it was among those tried."""
    mode = tuned.get("mode", "dense")
    for trial in trials:
        c = trial.candidate
        if (c.layer, c.pooling, c.mode) != (recipe.layer, recipe.pooling, mode):
            continue
        if mode != "hybrid" or (abs(c.weight - tuned.get("weight", 0.5)) < 1e-9 and c.fusion == tuned.get("fusion", "score")):
            return c
    return None


def _two_fold(trials: list[Trial]) -> float:
    """Choose on even-numbered queries and measure on odd ones, then the other way round: an honest estimate."""
    n = len(trials[0].per_query)
    if n < 2:
        return float(trials[0].per_query.mean()) if n else 0.0
    halves = [np.arange(0, n, 2), np.arange(1, n, 2)]
    total = 0.0
    for choose, measure in (halves, halves[::-1]):
        chosen = max(trials, key=lambda t: round(float(t.per_query[choose].mean()), 9))
        total += float(chosen.per_query[measure].sum())
    return total / n


# -- held-out questions ------------------------------------------------------------------------------


def _documents(db) -> list[dict]:
    rows = db.execute("SELECT id, key, text, fields, group_key FROM documents ORDER BY id").fetchall()
    if not rows:
        raise BertdexError("the index is empty: nothing to tune")
    return [{"id": r[0], "key": r[1], "text": r[2], "fields": json.loads(r[3] or "{}"), "group": r[4]} for r in rows]


def _heldout(documents: list[dict], queries, qrels, group_field, max_queries) -> tuple[list[HeldOut], str]:
    if queries is not None and qrels is not None:
        from search.quality.evaluate import labelled_queries

        judged, _ = labelled_queries(queries, qrels)
        return _spread([HeldOut(text, relevance) for _, text, relevance in judged], max_queries), \
            f"labelled queries ({len(judged)})"
    groups: dict[str, list[dict]] = {}
    for doc in documents:
        group = doc["fields"].get(group_field) if group_field else doc["group"]
        if group is not None and str(group).strip():
            groups.setdefault(str(group), []).append(doc)
    by_text: dict[str, set[int]] = {}
    for doc in documents:
        by_text.setdefault(doc["text"], set()).add(doc["id"])
    heldout = []
    for members in groups.values():
        if len(members) < 2:
            continue
        for doc in members:
            relevance = {m["key"]: 1 for m in members if m["id"] not in by_text[doc["text"]]}
            if relevance:
                heldout.append(HeldOut(doc["text"], relevance, frozenset(by_text[doc["text"]])))
    if not heldout:
        where = f"field {group_field!r}" if group_field else "the index's groups (--group-field at index time)"
        raise BertdexError(f"nothing to tune on: give --queries and --qrels, or entries that share a group ({where} has "
                           "no group with two or more differently worded entries)")
    label = f"field {group_field}" if group_field else "group"
    return _spread(heldout, max_queries), f"entries sharing a {label}, each held out against the others ({len(heldout)})"


def _spread(items: list, limit: int) -> list:
    """At most `limit` items, evenly spaced (deterministic)."""
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _without(ranked: list, exclude: frozenset) -> list:
    return [row for row in ranked if row[0] not in exclude] if exclude else ranked


# -- vectors for every layer and pooling --------------------------------------------------------------


def _full_encoder(encoder: Encoder | None, recipe) -> Encoder:
    """An encoder that computes every hidden state (the given one if it does)."""
    if encoder is not None and encoder.model is not None and (encoder.keep_layers is None or encoder.keep_layers >= encoder.num_layers):
        return encoder
    from indexer.embed.models import resolve_model_folder

    return Encoder(resolve_model_folder(recipe.model), max_length=recipe.max_length, keep_layers=None)


@dataclass
class _Pooled:
    raw: dict        # (layer, "mean"|"max"|"cls") -> [vectors, features] float32, not normalized
    owners: np.ndarray


def _all_layer_vectors(encoder: Encoder, texts: list[str], layers: list[int], exclude_special: bool,
                       windows: bool, stride: int) -> _Pooled:
    """One forward pass over `texts` with all hidden states; mean, max and CLS of each chosen layer."""
    ids, types, specials, owners, _, _ = encoder.tokenize(texts, windows=windows, stride=stride,
                                                          special_mask=exclude_special)
    raw = {(layer, name): np.zeros((len(ids), encoder.hidden_size), np.float32)
           for layer in layers for name in ("mean", "max", "cls")}
    pad = encoder.tokenizer.pad_token_id or 0
    for batch in _length_batches([len(x) for x in ids]):
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        token_types = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            attention[row, : len(ids[i])] = 1
            if types:
                token_types[row, : len(ids[i])] = torch.tensor(types[i])
        hidden = encoder.hidden_states(input_ids, attention, token_types, None)
        mask = attention.numpy().astype(np.float32)
        if exclude_special:
            for row, i in enumerate(batch):
                mask[row, : len(specials[i])] *= 1 - np.asarray(specials[i], dtype=mask.dtype)
        for layer in layers:
            raw[(layer, "mean")][batch] = pool_mean(hidden[layer], mask)
            raw[(layer, "max")][batch] = pool_max(hidden[layer], mask)
            raw[(layer, "cls")][batch] = pool_cls(hidden[layer], mask)
    return _Pooled(raw, owners)


def _vectors(pooled: _Pooled, layer: int, pooling: str) -> np.ndarray:
    if pooling == "mean-max":
        return normalize(np.concatenate([pooled.raw[(layer, "mean")], pooled.raw[(layer, "max")]], axis=1))
    return normalize(pooled.raw[(layer, pooling)])


def _dense_lists(passages: _Pooled, asked: _Pooled, layer: int, pooling: str, heldout: list[HeldOut]) -> list[list]:
    """Per question: (document id, cosine, passage) for the top POOL passages, best first, as Searcher._dense."""
    matrix, queries = _vectors(passages, layer, pooling), _vectors(asked, layer, pooling)
    owners = passages.owners
    lists = []
    for start in range(0, len(queries), 512):
        scores = queries[start : start + 512] @ matrix.T
        for row, question in zip(scores, heldout[start : start + 512]):
            n = min(POOL + len(question.exclude) * 4, len(row))
            top = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
            top = top[np.lexsort((top, -row[top]))]
            ranked = [(int(owners[p]), float(row[p]), int(p)) for p in top]
            lists.append(_without(ranked, question.exclude)[:POOL])
    return lists


# -- judging --------------------------------------------------------------------------------------


class _Judge:
    """Turns ranked (document id, score, passage) lists into metrics, collapsing groups as Searcher does."""

    def __init__(self, documents: list[dict], heldout: list[HeldOut]):
        from search.quality.evaluate import keys_for_metrics

        self.keys_for_metrics = keys_for_metrics
        self.heldout = heldout
        self.document_ids = {d["id"]: d for d in documents}
        self.members: dict[str, tuple[str, ...]] = {}
        for doc in documents:
            if doc["group"] is not None:
                self.members[doc["group"]] = self.members.get(doc["group"], ()) + (doc["key"],)

    def trial(self, candidate: Candidate, lists: list[list]) -> Trial:
        per_query = [query_metrics(self._keys(ranked, q), q.relevance) for ranked, q in zip(lists, self.heldout)]
        return Trial(candidate, mean_metrics(per_query), np.asarray([m["mrr@10"] for m in per_query]))

    def _keys(self, ranked: list, question: HeldOut) -> list[str]:
        seen_docs, seen_groups, hits = set(), set(), []
        for doc_id, _, _ in ranked:
            if doc_id in seen_docs or doc_id not in self.document_ids:
                continue
            seen_docs.add(doc_id)
            doc = self.document_ids[doc_id]
            group = doc["group"]
            if group is not None:
                if group in seen_groups:
                    continue
                seen_groups.add(group)
                variants = self.members[group]  # the held-out entry itself is never in its relevance
            else:
                variants = ()
            hits.append((doc["key"], variants))
            if len(hits) == 10:
                break
        return self.keys_for_metrics(hits, question.relevance)


# -- storing ----------------------------------------------------------------------------------------


def _store(folder: Path, manifest, best: Trial, source: str, queries: int, recipe_changed: bool, keep_cut: bool) -> None:
    c = best.candidate
    old = manifest.settings.get("search", {})
    search = {"mode": c.mode, "weight": c.weight if c.weight is not None else old.get("weight", 0.5),
              "fusion": c.fusion or old.get("fusion", "score"),
              "min_score": old.get("min_score") if keep_cut and not recipe_changed else None,
              "tuned": {"source": source, "queries": queries, "mrr@10": round(best.metrics["mrr@10"], 6),
                        "label": c.label()}}
    if recipe_changed:
        reembed_index(folder, layer=c.layer, pooling=c.pooling, search=search, expected_generation=manifest.generation)
    else:
        store_search_settings(folder, search, expected_generation=manifest.generation)

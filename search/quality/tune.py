"""Pick, per collection, the recipe and search mode that answer its questions best, and store them in the index.

Every candidate (layer x pooling, keyword, hybrid fusion x weight: `search.quality.trials`; and the
same with each other bundled model: a collection may be answered better by the multilingual model
than the English one, or the other way round; and the index's model paired with each of them,
indexer.embed.pair) is measured on held-out questions (`search.quality.heldout`): labelled queries, or without labels the collection's
groups of phrasings. The choice is made out of sample (`search.quality.choose`): the index changes only
when the cross-validated score of the choosing rule beats the current setting by a significant margin;
otherwise the current setting stays, and the report says why. When labels are given and the index
also has groups, both are measured and reported; the labelled queries choose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from indexer.ingest.reembed import reembed_index, store_search_settings
from indexer.store.folder import check_index_folder, connect, open_manifest, read_manifest
from search.quality.choose import FOLDS, Decision, decide, fold_ids
from search.quality.heldout import (Questions, answer_questions, group_questions, labelled_questions,
                                   read_documents)
from search.quality.trials import (SHARES, WEIGHTS, Candidate, Trial, entry_vectors, keyword_lists, measure_all,
                                   measure_pairs, order, plain, tried_fusions, tuned_layers)

MAX_QUERIES = 2000


@dataclass(frozen=True)
class OtherModel:
    """Another bundled model, ready to be measured: its recipe as it comes, its encoder, the entries' vectors."""

    name: str
    manifest: object  # the index's manifest with this model's recipe
    encoder: object
    passages: object


@dataclass(frozen=True)
class Measured:
    """One question source: its trials (the current setting first), and the decision on them."""

    source: str
    queries: int
    trials: list[Trial]
    decision: Decision
    simple: tuple = ()  # the plain settings' indices in trials (the rule's narrow choice)
    keys: tuple = ()    # each question's fold key

    @property
    def best(self) -> Trial:
        return self.trials[self.decision.best]

    @property
    def picked(self) -> Trial:
        return self.trials[self.decision.picked]

    @property
    def current(self) -> Trial:
        return self.trials[self.decision.current]

    @property
    def chosen(self) -> Trial:
        return self.trials[self.decision.chosen]

    def to_dict(self) -> dict:
        return {"source": self.source, "queries": self.queries, "best": _row(self.best), "current": _row(self.current),
                "picked": _row(self.picked), "chosen": _row(self.chosen), **self.decision.to_dict()}


@dataclass(frozen=True)
class TuneReport:
    """What was tried (best first), what the rule chose and why, what was there before, and what was stored."""

    folder: str
    measured: Measured             # the source that chose
    other: Measured | None         # groups, measured too when labels chose
    recipe_changed: bool
    stored: bool
    seconds: float

    @property
    def trials(self) -> list[Trial]:
        return sorted(self.measured.trials, key=order, reverse=True)

    @property
    def best(self) -> Trial:
        return self.measured.best

    @property
    def current(self) -> Trial:
        return self.measured.current

    @property
    def chosen(self) -> Trial:
        return self.measured.chosen

    @property
    def decision(self) -> Decision:
        return self.measured.decision

    def to_dict(self) -> dict:
        return {"folder": self.folder, **self.measured.to_dict(), "recipe_changed": self.recipe_changed,
                "stored": self.stored, "seconds": round(self.seconds, 1),
                "also_measured": self.other.to_dict() if self.other else None,
                "trials": [_row(t) for t in self.trials]}


def tune_index(folder: str | Path, *, queries: dict | None = None, qrels: dict | None = None,
               group_field: str | None = None, store: bool = True, encoder=None,
               max_queries: int = MAX_QUERIES, layers: list[int] | None = None,
               ignore_identical_ids: bool = False, folds: int = FOLDS, other_models: bool = True,
               adapt: bool = False, adapt_steps: int | None = None, pair_weights: dict | None = None,
               note: dict | None = None, progress=None) -> TuneReport | PlainReport:
    """Measure the search space on `folder`'s held-out questions; store the choice unless `store` is False.

    Without labels: the groups of phrasings, else the entries found by their own answers (a plain FAQ),
    else a PlainReport saying what tune needs (nothing is changed).
    `ignore_identical_ids`: with labels, drop entries whose key is a query's id or whose text is its text
    (without labels an entry and its copies are always dropped from their own ranking).
    `other_models`: also try the other bundled models (the entries are embedded once more by each).
    `adapt`: also try the index's model fine-tuned on the choosing questions' pairs (search.quality.adapt),
    cross-fitted; `pair_weights` ({(question, key): weight}, adapt.feedback_weights): the labelled pairs' weights
    (labels from agents' verdicts, weighed by agreement); `adapt_steps`: steps per training (default: by the
    pairs' count); `note`: stored with the tuning figures (and an adaptation's provenance);
    `progress(message)` hears each training step.
    """
    started = time.perf_counter()
    folder = check_index_folder(Path(folder))
    try:
        manifest, documents, sources = _read_index(folder, queries, qrels, group_field, max_queries, ignore_identical_ids)
    except NothingToMeasure:
        return plain_report(folder, group_field)
    current = current_candidate(manifest)
    alone = replace(manifest, recipe=manifest.recipe.alone())  # the index's own model, measured by itself
    encoder = full_encoder(encoder, alone.recipe)
    layers = tuned_layers(encoder, alone.recipe, layers)
    passages = entry_vectors(encoder, alone, documents, layers)
    companion = manifest.recipe.companion
    others = prepare_other_models(alone, documents, also=[companion.model] if companion else [],
                                  bundled=other_models)
    pairs = [pair_of(other, current, other_models) for other in others]
    if not other_models:  # the index's companion only as it is now (the current setting must be among the trials)
        others = []
    trying = _adapted_trials(alone, documents, sources[0], group_field, pair_weights, adapt_steps, progress) \
        if adapt else None
    measured = [_measure(encoder, alone, documents, questions, words, layers, passages, folds, others, pairs, current,
                         trying.trials if trying is not None and n == 0 else [])
                for n, (questions, words) in enumerate(sources)]
    chosen = measured[0].chosen.candidate
    changed = measured[0].decision.change and chosen.mode != "keyword" \
        and _recipe_of(chosen) != _recipe_of(current_candidate(manifest, dense=True))
    if store:
        _store(folder, manifest, measured[0], changed, trying, adapt_steps, progress, note)
    return TuneReport(str(folder), measured[0], measured[1] if len(measured) > 1 else None, changed, store,
                      time.perf_counter() - started)


def _read_index(folder: Path, queries, qrels, group_field, max_queries, ignore_identical_ids):
    """In one read transaction: manifest, documents, and each question source with its keyword rankings."""
    db = connect(folder, readonly=True)
    try:
        db.execute("BEGIN")
        manifest = read_manifest(db, folder)
        documents = read_documents(db)
        if queries is not None and qrels is not None:
            found = [labelled_questions(documents, queries, qrels, max_queries, ignore_identical_ids),
                     group_questions(documents, group_field, max_queries, required=False)]
        else:
            found = [group_questions(documents, group_field, max_queries, required=False)
                     or plain_faq_questions(documents, max_queries)]
        sources = [(q, keyword_lists(db, q.items)) for q in found if q is not None]
        db.execute("COMMIT")
    finally:
        db.close()
    return manifest, documents, sources


class NothingToMeasure(Exception):
    """A plain FAQ with neither labels, groups nor an answer field: tune has no question to measure on."""


def plain_faq_questions(documents: list[dict], max_queries: int) -> Questions:
    """Without labels or groups: the entries found by their own answers (heldout.answer_questions), else
    NothingToMeasure (tune_index turns it into a report that says what to give)."""
    found = answer_questions(documents, max_queries)
    if found is None:
        raise NothingToMeasure()
    return found


@dataclass(frozen=True)
class PlainReport:
    """What tune did on a FAQ with nothing to measure on: kept its setting, and what it needs."""

    folder: str
    mode: str
    cut: float | None
    cut_source: str | None
    needs: str
    stored: bool = False

    def to_dict(self) -> dict:
        return {"folder": self.folder, "measured": False, "mode": self.mode, "cut": self.cut,
                "cut_source": self.cut_source, "needs": self.needs, "stored": self.stored}


def plain_report(folder: Path, group_field: str | None) -> PlainReport:
    """The report of a tune with no question to measure: the index is left as it is."""
    search = open_manifest(folder).settings.search
    where = f"field {group_field!r} has" if group_field else "the index has"
    needs = (f"nothing to measure on: {where} no group of two or more phrasings, no labels were given, and no stored "
             "answer field (one an entry's answer could find it by). Kept " + search.mode
             + (f" with the cut {search.cut_source()} ({search.min_score:.4f})" if search.min_score is not None else "")
             + ". To tune: give --queries/--qrels (a few asked questions and their right entries), or --feedback once "
             "agents marked answers on the page, or index again with --group-field or an answer column")
    return PlainReport(str(folder), search.mode, search.min_score, search.cut_source(), needs)


def prepare_other_models(manifest, documents, also: list[str] = (), bundled: bool = True) -> list[OtherModel]:
    """Each bundled model other than the index's (unless not `bundled`) and those named in `also` (the
    index's companion), with its recipe as it comes and the entries embedded by it."""
    from indexer.embed.models import KNOWN_MODELS, known_model
    from indexer.embed.resolve import resolve_recipe

    own = known_model(manifest.recipe.model)
    found, seen = [], {manifest.recipe.model_checksum}
    for name in [m.name for m in KNOWN_MODELS if bundled and (own is None or m.name != own.name)] + list(also):
        # PyTorch fp32: the reference path, and it computes every hidden state up to the recipe's (the last)
        resolved = resolve_recipe(name, exclude_special=manifest.recipe.exclude_special, backend="torch",
                                  precision="fp32")
        if resolved.recipe.model_checksum in seen:
            continue
        seen.add(resolved.recipe.model_checksum)
        other = replace(manifest, recipe=resolved.recipe)
        found.append(OtherModel(resolved.recipe.model, other, resolved.encoder,
                                entry_vectors(resolved.encoder, other, documents, [resolved.recipe.layer])))
    return found


def pair_of(other: OtherModel, current: Candidate, every_share: bool = True) -> tuple:
    """(other, shares): the index's model paired with `other` at each of SHARES (unless not `every_share`)
    and at the current share where `other` is the index's companion now."""
    now = [current.share] if current.companion == other.name else []
    return other, tuple(sorted({*(SHARES if every_share else ()), *now}))


def measure_trials(encoder, manifest, documents, heldout, words, layers, passages, others: list[OtherModel],
                   pairs: list[tuple] = (), current: Candidate | None = None) -> tuple[list[Trial], list[int]]:
    """Every candidate's trial, the current setting first (it wins ties), and the plain settings' indices.

    `manifest`: the index's, its recipe without a companion; `pairs`: (other model, shares) from pair_of;
    `current`: the index's setting (current_candidate of its own manifest; default: `manifest`'s).
    """
    fusions = tried_fusions(manifest.settings.search)
    trials = measure_all(encoder, manifest, documents, heldout, words, layers, passages, fusions=fusions)
    recipes = {None: manifest.recipe}
    for other in others:
        recipes[other.name] = other.manifest.recipe
        trials += measure_all(other.encoder, other.manifest, documents, heldout, words, [other.manifest.recipe.layer],
                              other.passages, model=other.name, fusions=fusions)
    for other, shares in pairs:
        trials += measure_pairs(encoder, manifest, documents, heldout, words, passages, other, shares, fusions)
    current = current or current_candidate(manifest)
    trials = sorted(trials, key=lambda t: t.candidate != current)
    if trials[0].candidate != current:
        raise AssertionError(f"the current setting {current} was not among the candidates")
    return trials, [i for i, t in enumerate(trials) if plain(t.candidate, recipes[t.candidate.model])]


def _measure(encoder, manifest, documents, questions: Questions, words, layers, passages, folds: int,
             others: list[OtherModel], pairs: list[tuple], current: Candidate, extra: list[Trial] = ()) -> Measured:
    trials, simple = measure_trials(encoder, manifest, documents, questions.items, words, layers, passages, others,
                                    pairs, current)
    trials = trials + list(extra)  # after the plain ones: never plain, so picked only where picking among all wins
    mrr = np.vstack([t.per_query for t in trials])
    ndcg = np.vstack([t.per_query_ndcg for t in trials])
    decision = decide(mrr, ndcg, 0, fold_ids([q.fold_key for q in questions.items], folds), simple)
    return Measured(questions.source, len(questions.items), trials, decision, tuple(simple),
                    tuple(q.fold_key for q in questions.items))


def current_candidate(manifest, dense: bool = False) -> Candidate:
    """The candidate the index's recipe and search settings stand for (a hybrid weight off the grid: the nearest);
    `dense`: the dense candidate of its recipe, whatever the mode (what its vectors are)."""
    recipe, search = manifest.recipe, manifest.settings.search
    pair = dict(companion=recipe.companion.model, share=recipe.companion_share) if recipe.companion else {}
    if dense:  # what the vectors are, whatever the mode
        return Candidate(recipe.layer, recipe.pooling, "dense", **pair)
    if search.mode == "hybrid":
        weight = min(WEIGHTS, key=lambda w: abs(w - search.weight))
        return Candidate(recipe.layer, recipe.pooling, "hybrid", weight, search.fusion, **pair)
    return Candidate(recipe.layer, recipe.pooling, search.mode, **({} if search.mode == "keyword" else pair))


def _recipe_of(candidate: Candidate) -> tuple:
    """What the vectors depend on: a change of it means re-embedding the entries."""
    return candidate.model, candidate.layer, candidate.pooling, candidate.companion, candidate.share


def full_encoder(encoder, recipe):
    """An encoder that computes every hidden state (the given one if it does)."""
    if encoder is not None and encoder.model is not None and encoder.max_length == recipe.max_length \
            and (encoder.keep_layers is None or encoder.keep_layers >= encoder.num_layers):  # PyTorch: all layers
        return encoder
    from indexer.embed.encoder import Encoder
    from indexer.embed.models import resolve_model_folder

    return Encoder(resolve_model_folder(recipe.model), max_length=recipe.max_length, keep_layers=None)


def _row(trial: Trial) -> dict:
    c = trial.candidate
    return {"mode": c.mode, "model": c.model, "layer": c.layer, "pooling": c.pooling, "weight": c.weight, "fusion": c.fusion,
            "label": c.label(), **{name: round(value, 6) for name, value in trial.metrics.items()}}


def _adapted_trials(manifest, documents, source, group_field, pair_weights, steps, progress):
    """The adapted candidate's cross-fitted trials on the choosing source (None when it cannot be measured)."""
    from search.quality import adapt as adaptation

    questions, words = source
    found = []
    if questions.labelled:
        found = adaptation.labelled_pairs(questions, documents)
        if pair_weights is not None:
            found = adaptation.weighed(found, pair_weights)
    found += adaptation.group_pairs(documents, group_field)
    if not found:
        return None
    return adaptation.measure_adapted(manifest, documents, questions, words, found, steps=steps, progress=progress)


def _store(folder: Path, manifest, measured: Measured, recipe_changed: bool, trying=None, adapt_steps=None,
           progress=None, note: dict | None = None) -> None:
    """The chosen setting (or the current one, with the tuning figures) in one commit."""
    c, old, decision = measured.chosen.candidate, manifest.settings.search, measured.decision
    tuned = {"source": measured.source, "queries": measured.queries, "label": c.label(),
             "mrr@10": round(measured.chosen.metrics["mrr@10"], 6), **decision.to_dict(), **(note or {})}
    search = replace(old, mode=c.mode, weight=c.weight if c.weight is not None else old.weight,
                     fusion=c.fusion or old.fusion, tuned=tuned,
                     min_score=old.min_score if not decision.change else None,
                     calibration=old.calibration if not decision.change else None,
                     cut=old.cut if not decision.change else None)  # a change: the commit makes the collection's cut again
    if recipe_changed and c.model == "adapted":
        from search.quality.adapt import count_sources, store_adapted

        store_adapted(folder, manifest, trying.pairs, layer=c.layer, pooling=c.pooling, search=search,
                      steps=adapt_steps, sources=count_sources(trying.pairs), note=note, progress=progress)
    elif recipe_changed:
        reembed_index(folder, layer=c.layer, pooling=c.pooling, search=search, expected_generation=manifest.generation,
                      model=c.model, companion=c.companion, share=c.share or 0.0)
    else:
        store_search_settings(folder, search, expected_generation=manifest.generation)


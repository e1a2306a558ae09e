"""Tune's adapted candidate: the index's model fine-tuned on the collection's own pairs, measured out of sample.

Pairs (question, right entry) come from the question source tune measures on (labelled queries: each
with each relevant entry; groups: each member with the next one of its group) and, when labels choose,
also from the index's groups and agents' verdicts (indexer.embed.adapted.Pair). The candidate is
cross-fitted: the questions are split into ADAPT_FOLDS folds, and each fold's questions are answered
by a model trained without any pair that touches them (their query id, their text, or, for a group
member, the entry itself), so every question's figure is out of sample; tune's rule and gate then
treat it as any other candidate. Only when it is chosen is a model trained on all pairs and stored
(`store_adapted`). This module does not decide (search.quality.choose) nor read the feedback table.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from indexer.embed import adapted
from indexer.embed.adapted import Pair
from indexer.store.keywords import normalize_text
from search.quality.choose import fold_ids
from search.quality.heldout import HeldOut, Questions
from search.quality.trials import Candidate, Trial, _dense_lists, _hybrids, _Judge, entry_vectors

ADAPTED = "adapted"  # Candidate.model of the adapted candidate
ADAPT_FOLDS = 3      # trainings per measurement: each fold's questions are answered by a model that never saw them
MAX_PAIRS = 2000     # spread evenly over the pairs found
ADAPT_SEED = adapted.SEED


@dataclass(frozen=True)
class TrainingPair:
    """A pair and what it touches (query ids, texts, entry ids): a held-out question touching it excludes it."""

    pair: Pair
    touches: frozenset
    key: str = ""  # the entry's key (labelled pairs)


@dataclass(frozen=True)
class AdaptedTrials:
    """The adapted candidates' cross-fitted trials, and what each fold trained on (pair ids)."""

    trials: list[Trial]
    pairs: list[TrainingPair]
    trained: list[frozenset]     # per fold: the ids of the pairs its model trained on
    held_out: list[frozenset]    # per fold: the ids of the pairs its questions touch
    seconds: float


def base_model(manifest) -> str:
    """What an adaptation starts from: the index's model, or the base an adapted index was trained from."""
    made = manifest.settings.adapted
    return made["base_model"] if made and adapted.is_adapted(manifest.recipe.model) else manifest.recipe.model


def labelled_pairs(questions: Questions, documents: list[dict]) -> list[TrainingPair]:
    """Each labelled question with each of its relevant entries."""
    texts = {d["key"]: d["text"] for d in documents}
    found = []
    for q in questions.items:
        for key in sorted(q.relevance):
            if q.relevance[key] > 0 and key in texts:
                found.append(TrainingPair(Pair(f"q:{q.fold_key}>{key}", q.text, texts[key]),
                                          frozenset({f"q:{q.fold_key}", f"t:{_same(q.text)}"}), key))
    return found


def group_pairs(documents: list[dict], group_field: str | None = None) -> list[TrainingPair]:
    """Each member of a group of phrasings with the next one (a ring): n pairs for n members, none with itself.

    group_pairs([a, b, c] of one group) -> (a, b), (b, c), (c, a)"""
    groups: dict[str, list[dict]] = {}
    for doc in documents:
        group = doc["fields"].get(group_field) if group_field else doc["group"]
        if group is not None and str(group).strip():
            groups.setdefault(str(group), []).append(doc)
    found = []
    for group, members in groups.items():
        members = [m for i, m in enumerate(members) if _same(m["text"]) not in {_same(x["text"]) for x in members[:i]}]
        if len(members) < 2:
            continue
        for a, b in zip(members, members[1:] + members[:1]):
            if a is not b:
                found.append(TrainingPair(Pair(f"g:{a['key']}>{b['key']}", a["text"], b["text"]),
                                          frozenset({f"d:{a['id']}", f"d:{b['id']}", f"t:{_same(a['text'])}",
                                                     f"t:{_same(b['text'])}"})))
    return found


def touched_by(question: HeldOut, labelled: bool) -> frozenset:
    """What a held-out question touches: its query id and text, or (a group member) its entries and text."""
    own = {f"t:{_same(question.text)}"}
    if labelled:
        return frozenset(own | {f"q:{question.fold_key}"})
    return frozenset(own | {f"d:{i}" for i in question.exclude})


def training_pairs(pairs: list[TrainingPair], touched: set) -> list[TrainingPair]:
    """The pairs touching none of `touched`."""
    return [p for p in pairs if not (p.touches & touched)]


def spread_pairs(pairs: list[TrainingPair], limit: int = MAX_PAIRS) -> list[TrainingPair]:
    if len(pairs) <= limit:
        return pairs
    return [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]


@dataclass(frozen=True)
class FoldPlan:
    """Cross-fitting: per fold with questions, (fold, its question rows, the pairs it may train on); and per
    fold the ids of the pairs that train it and of those held out (touching its questions)."""

    folds: list
    trained: list
    held: list


def plan_folds(questions: Questions, pairs: list[TrainingPair], folds: int, seed: int,
               choose: Callable[[list], list] = lambda train: train) -> FoldPlan | None:
    """Each fold's questions and the pairs touching none of them (`choose` may thin them); None when some fold
    has no pair left to train on (nothing could be measured out of sample)."""
    touched = [touched_by(q, questions.labelled) for q in questions.items]
    fold_of = fold_ids([min(t) for t in touched], folds, seed)  # one key per question; equal texts share a fold
    plan, trained, held = [], [], []
    for fold in range(folds):
        rows = np.flatnonzero(fold_of == fold)
        if len(rows) == 0:
            trained.append(frozenset()), held.append(frozenset())
            continue
        out = set().union(*(touched[i] for i in rows))
        train = choose(training_pairs(pairs, out))
        trained.append(frozenset(p.pair.id for p in train))
        held.append(frozenset(p.pair.id for p in pairs if p.touches & out))
        if not train:
            return None
        plan.append((fold, rows, train))
    return FoldPlan(plan, trained, held)


def measure_adapted(manifest, documents: list[dict], questions: Questions, words: list[list], pairs: list[TrainingPair],
                    *, folds: int = ADAPT_FOLDS, steps: int | None = None, seed: int = ADAPT_SEED,
                    progress: Callable[[str], None] | None = None) -> AdaptedTrials | None:
    """The adapted candidate (dense, and hybrid score fusion at each weight) of `manifest`'s recipe (one model),
    each question answered by the fold model that never trained on a pair it touches; None when some fold
    has no pair left to train on."""
    import time

    started = time.perf_counter()
    recipe, items = manifest.recipe, questions.items
    plan = plan_folds(questions, pairs, folds, seed, choose=spread_pairs)
    if plan is None:
        return None
    dense: list = [None] * len(items)
    base = base_model(manifest)
    with tempfile.TemporaryDirectory(prefix="bertdex-adapt-") as scratch:
        for fold, rows, train in plan.folds:
            say = (lambda step, total, loss, fold=fold: progress(f"adapting fold {fold + 1}/{folds}: step {step}/{total}, "
                                                                 f"loss {loss:.3f}")) if progress else None
            made = adapted.adapt_model(base, [p.pair for p in train], Path(scratch), layer=recipe.layer,
                                       pooling=recipe.pooling, query_prefix=recipe.query_prefix,
                                       passage_prefix=recipe.passage_prefix, steps=steps, seed=seed, progress=say)
            lists = _fold_lists(Path(scratch) / made.model, manifest, documents, [items[i] for i in rows])
            for i, ranked in zip(rows, lists):
                dense[i] = ranked
    judge = _Judge(documents, items)
    candidate = Candidate(recipe.layer, recipe.pooling, "dense", model=ADAPTED)
    trials = [judge.trial(candidate, dense)] + _hybrids(judge, candidate, dense, words, ("score",))
    return AdaptedTrials(trials, pairs, plan.trained, plan.held, time.perf_counter() - started)


def _fold_lists(folder: Path, manifest, documents: list[dict], heldout: list[HeldOut]) -> list[list]:
    """Dense candidate lists of `heldout` with the model in `folder` (entries and questions embedded as the index does)."""
    from indexer.embed.encoder import Encoder
    from indexer.ingest.embedding import embed_questions

    recipe = manifest.recipe
    encoder = Encoder(folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision="fp32", backend="torch",
                      cache=None, threads=adapted.free_threads())
    passages = entry_vectors(encoder, manifest, documents, [recipe.layer])
    asked = embed_questions(encoder, recipe, manifest.settings, [q.text for q in heldout], layers=[recipe.layer])
    return _dense_lists(passages, asked, recipe.layer, recipe.pooling, heldout)


def store_adapted(folder: Path, manifest, pairs: list[TrainingPair], *, layer: int, pooling: str, search,
                  steps: int | None = None, seed: int = ADAPT_SEED, sources: dict | None = None,
                  note: dict | None = None, progress: Callable[[str], None] | None = None):
    """Train on all `pairs`, save the model in the index folder and re-embed every entry with it (one commit)."""
    from indexer.ingest.reembed import reembed_index

    recipe = manifest.recipe
    say = (lambda step, total, loss: progress(f"adapting on all {len(pairs)} pairs: step {step}/{total}, "
                                              f"loss {loss:.3f}")) if progress else None
    made = adapted.adapt_model(base_model(manifest), [p.pair for p in spread_pairs(pairs)], Path(folder) / adapted.MODELS,
                               layer=layer, pooling=pooling, query_prefix=recipe.query_prefix,
                               passage_prefix=recipe.passage_prefix, steps=steps, seed=seed, sources=sources,
                               progress=say)
    adapted.remember_index(Path(folder))
    return reembed_index(folder, layer=layer, pooling=pooling, search=search, expected_generation=manifest.generation,
                         model=made.model, adapted={**made.to_dict(), **(note or {})})


def count_sources(pairs: list[TrainingPair]) -> dict:
    """{"labelled": n, "groups": n, "feedback": n} by the pairs' id prefixes."""
    names = {"q": "labelled", "g": "groups", "f": "feedback"}
    counts: dict[str, int] = {}
    for p in pairs:
        name = names.get(p.pair.id[:1], "other")
        counts[name] = counts.get(name, 0) + 1
    return counts


def _same(text: str) -> str:
    return normalize_text(text).casefold()



AGREEMENT = 2          # distinct clients whose good verdicts make a feedback pair count fully
ONE_CLIENT_SHARE = 0.1  # the most, against the other pairs, that the pairs one client alone backs may weigh


def feedback_weights(verdicts) -> dict[tuple[str, str], float]:
    """{(question, key): weight} for adaptation from agents' verdicts (indexer.store.feedback.Verdict), by agreement.

    A pair counts when more distinct clients marked the key good for the question (up, right) than wrong
    (down); its weight is the share of AGREEMENT distinct clients backing it (one client: 0.5, two: 1).
    One client alone cannot move the model: the pairs only one client backs together weigh at most
    ONE_CLIENT_SHARE of the other pairs' weight (at least one pair's worth), however many verdicts it sent
    (the loss is weighed by these absolute weights: a batch of such pairs barely moves the weights).
    Verdicts without a client (older rows, the library) count as one client, "unknown".
    feedback_weights([up by a, up by b on (q, k1); up by a on (q, k2)]) -> {(q, k1): 1.0, (q, k2): 0.5}
    """
    good: dict[tuple[str, str], set] = {}
    bad: dict[tuple[str, str], set] = {}
    for v in verdicts:
        pair = (_same(v.question), v.key)
        (good if v.verdict in ("up", "right") else bad).setdefault(pair, set()).add(v.client or "unknown")
    weights, alone = {}, {}
    for pair, clients in good.items():
        if len(clients) > len(bad.get(pair, ())):
            weights[pair] = min(1.0, len(clients) / AGREEMENT)
            if len(clients) == 1:
                alone.setdefault(next(iter(clients)), []).append(pair)
    total = sum(weights.values())
    for client, pairs in alone.items():
        theirs = sum(weights[p] for p in pairs)
        allowed = max(1.0, ONE_CLIENT_SHARE * (total - theirs))
        if theirs > allowed:
            for p in pairs:
                weights[p] *= allowed / theirs
    return weights


def weighed(pairs: list[TrainingPair], weights: dict[tuple[str, str], float]) -> list[TrainingPair]:
    """Labelled pairs with the weight of their (question, key) in `weights` (feedback_weights); others dropped."""
    out = []
    for p in pairs:
        weight = weights.get((_same(p.pair.question), p.key), 0.0)
        if weight > 0:
            out.append(TrainingPair(Pair(p.pair.id, p.pair.question, p.pair.entry, weight), p.touches, p.key))
    return out


def new_verdicts(folder: str | Path) -> tuple[int, int]:
    """(verdicts given since the index last tried adaptation, id of the newest verdict)."""
    from indexer.store.feedback import FeedbackStore
    from indexer.store.folder import open_manifest

    settings = open_manifest(folder).settings
    seen = max(int((settings.adapted or {}).get("verdicts_seen") or 0),
               int((settings.search.tuned or {}).get("verdicts_seen") or 0))
    store = FeedbackStore(folder, readonly=True)
    try:
        ids = [v.id for v in store.verdicts()]
    finally:
        store.close()
    return sum(1 for i in ids if i > seen), max(ids, default=0)


def verdicts_of(folder: str | Path) -> list:
    from indexer.store.feedback import FeedbackStore

    store = FeedbackStore(folder, readonly=True)
    try:
        return store.verdicts()
    finally:
        store.close()

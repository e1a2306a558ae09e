"""Tune's light-map candidate: a learned d x d map on the index's frozen vectors, measured out of sample.

The same pairs, folds and exclusions as the fine-tuned candidate (search.quality.adapt): each fold's
questions are answered by a map trained without any pair that touches them. The map is trained on the
frozen model's unit vectors of the pairs' texts (questions as questions, entries as entries), so a
measurement costs one embedding pass and seconds of training. Only when tune chooses it is a map trained
on all pairs, saved in the index folder and the entries re-embedded with it (`store_map`). Not for an
index with a companion model (tune does not offer it there).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from indexer.embed import adapted, projection
from search.quality.adapt import ADAPT_FOLDS, ADAPT_SEED, AdaptedTrials, TrainingPair, _same, plan_folds
from search.quality.heldout import Questions
from search.quality.trials import Candidate, _dense_lists, _hybrids, _Judge, entry_vectors

MAP = "map"  # Candidate.model of the light-map candidate


def frozen_encoder(manifest):
    """An encoder of the index's model at its layer, without any map."""
    from indexer.embed.encoder import Encoder
    from indexer.embed.models import resolve_model_folder

    recipe = manifest.recipe
    return Encoder(resolve_model_folder(recipe.model), max_length=recipe.max_length, keep_layers=recipe.layer)


def pair_vectors(encoder, manifest, pairs: list[TrainingPair]) -> tuple[np.ndarray, np.ndarray]:
    """(question vectors, entry vectors) of `pairs` by the frozen model: one vector per text, embedded once."""
    from indexer.ingest.embedding import embed_entries, embed_questions
    from indexer.store.settings import IndexSettings

    recipe, key = manifest.recipe, (manifest.recipe.layer, manifest.recipe.pooling)
    asks = sorted({p.pair.question for p in pairs})
    answers = sorted({p.pair.entry for p in pairs})
    # questions as questions (their last tokens when long), entries as entries (their first)
    ask = dict(zip(asks, embed_questions(encoder, recipe, manifest.settings, asks, layers=[recipe.layer],
                                         long_questions="tail").of(*key)))
    answer = dict(zip(answers, embed_entries(encoder, recipe, IndexSettings(window=False), answers,
                                             layers=[recipe.layer]).of(*key)))
    return np.vstack([ask[p.pair.question] for p in pairs]), np.vstack([answer[p.pair.entry] for p in pairs])


def train_on(pairs: list[TrainingPair], questions: np.ndarray, entries: np.ndarray, *, seed: int = ADAPT_SEED,
             steps: int = projection.STEPS) -> np.ndarray:
    return projection.train_map(questions, entries, weights=np.asarray([p.pair.weight for p in pairs], np.float32),
                                same_entry=[_same(p.pair.entry) for p in pairs], steps=steps, seed=seed)


def measure_map(manifest, documents: list[dict], questions: Questions, words: list[list], pairs: list[TrainingPair],
                *, folds: int = ADAPT_FOLDS, seed: int = ADAPT_SEED, encoder=None,
                progress=None) -> AdaptedTrials | None:
    """The map candidate (dense, and hybrid score fusion at each weight), cross-fitted as measure_adapted does;
    None when some fold has no pair left to train on."""
    from indexer.ingest.embedding import Vectors, embed_questions

    started = time.perf_counter()
    recipe, items = manifest.recipe, questions.items
    key = (recipe.layer, recipe.pooling)
    plan = plan_folds(questions, pairs, folds, seed)
    if plan is None:
        return None
    encoder = encoder or frozen_encoder(manifest)
    passages = entry_vectors(encoder, manifest, documents, [recipe.layer])
    asked = embed_questions(encoder, recipe, manifest.settings, [q.text for q in items], layers=[recipe.layer])
    pair_q, pair_e = pair_vectors(encoder, manifest, pairs)
    index = {p.pair.id: i for i, p in enumerate(pairs)}
    dense: list = [None] * len(items)
    for fold, rows, train in plan.folds:
        if progress:
            progress(f"learning a map for fold {fold + 1}/{folds} on {len(train)} pairs")
        chosen = [index[p.pair.id] for p in train]
        matrix = train_on(train, pair_q[chosen], pair_e[chosen], seed=seed)
        mine = np.isin(asked.owners, rows)
        asked_rows = Vectors({key: asked.of(*key)[mine]}, np.searchsorted(rows, asked.owners[mine]), asked.spans[mine])
        lists = _dense_lists(_mapped(passages, key, matrix), _mapped(asked_rows, key, matrix), *key,
                             [items[i] for i in rows])
        for i, ranked in zip(rows, lists):
            dense[i] = ranked
    judge = _Judge(documents, items)
    candidate = Candidate(recipe.layer, recipe.pooling, "dense", model=MAP)
    trials = [judge.trial(candidate, dense)] + _hybrids(judge, candidate, dense, words, ("score",))
    return AdaptedTrials(trials, pairs, plan.trained, plan.held, time.perf_counter() - started)


def _mapped(vectors, key, matrix):
    from indexer.embed.pooling import normalize
    from indexer.ingest.embedding import Vectors

    return Vectors({key: normalize(projection.apply_map(vectors.of(*key), matrix))}, vectors.owners, vectors.spans)


def store_map(folder: Path, manifest, pairs: list[TrainingPair], *, search, seed: int = ADAPT_SEED,
              sources: dict | None = None, note: dict | None = None):
    """Learn the map on all `pairs`, save it in the index folder and re-embed every entry with it (one commit)."""
    from indexer.embed.models import model_checksum, resolve_model_folder
    from indexer.ingest.reembed import reembed_index
    from search.quality.adapt import base_model

    recipe = manifest.recipe
    started = time.perf_counter()
    pair_q, pair_e = pair_vectors(frozen_encoder(manifest), manifest, pairs)
    matrix = train_on(pairs, pair_q, pair_e, seed=seed)
    name = projection.save_map(matrix, Path(folder) / adapted.MODELS)
    adapted.remember_index(Path(folder))
    provenance = dict(map=name, kind="map", base_model=recipe.model,
                      base_checksum=model_checksum(resolve_model_folder(recipe.model)), pairs=len(pairs),
                      pairs_hash=adapted.pairs_hash([p.pair for p in pairs]), seed=seed, steps=projection.STEPS,
                      batch=projection.BATCH, learning_rate=projection.LEARNING_RATE, scale=projection.SCALE,
                      layer=recipe.layer, pooling=recipe.pooling, seconds=round(time.perf_counter() - started, 1),
                      sources=dict(sources or {}), from_model=base_model(manifest))
    return reembed_index(folder, layer=recipe.layer, pooling=recipe.pooling, search=search,
                         expected_generation=manifest.generation, projection=name, adapted={**provenance, **(note or {})})

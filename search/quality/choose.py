"""Choose a setting out of sample: cross-validation over folds of questions and paired significance tests.

The in-sample winner of ~100 candidates is optimistic: some of its lead is luck on these questions.
So choices are made by cross-validated estimates. The rule: pick among all candidates, or only among
a few plain settings (the current one, dense, keyword, hybrid score 0.5 with the index's recipe),
whichever of the two scores better in k-fold cross-validation (each question scored by the pick made
without its fold); best means mean MRR@10, then nDCG@10, and ties keep the earlier candidate (the
current setting first). The rule is measured the same way, one level up: each question is scored
by what the rule picks without its fold. The index changes only when that held-out score beats the
current setting by a positive and significant margin (paired sign-flip randomization test over the
questions, one-sided: the chance of a mean gain this large when the candidate is no better, p < ALPHA), and then to what the rule picks on all questions. The 95% interval of the
gain is a paired bootstrap. Pure numpy over per-question scores; this module does not search or
store. Random draws use fixed seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOLDS = 5
ALPHA = 0.05
ROUNDS = 10_000
SEED = 15


@dataclass(frozen=True)
class Decision:
    """What the choosing rule does on these questions, measured in and out of sample against the current setting."""

    best: int                  # index of the in-sample winner of all candidates
    picked: int                # what the rule picks on all questions (the best, or the best plain setting)
    current: int               # index of the current setting
    in_sample: float           # the in-sample winner's mean MRR@10 on all questions (optimistic)
    cross_validated: float     # the rule's mean MRR@10, each question scored by the choice made without it
    current_score: float       # the current setting's mean MRR@10
    gain: float                # cross_validated - current_score
    interval: tuple[float, float]  # 95% bootstrap interval of the gain
    p_value: float             # paired randomization test of the gain (one-sided: is it above 0?)
    folds: int
    change: bool               # the gain is positive and significant, and the rule's pick is not the current setting

    @property
    def chosen(self) -> int:
        return self.picked if self.change else self.current

    def to_dict(self) -> dict:
        return {"in_sample": round(self.in_sample, 6), "cross_validated": round(self.cross_validated, 6),
                "current": round(self.current_score, 6), "gain": round(self.gain, 6),
                "interval": [round(x, 6) for x in self.interval], "p_value": round(self.p_value, 6),
                "folds": self.folds, "changed": self.change}


def fold_ids(keys: list[str], folds: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """A fold per question, equal keys in the same fold, keys shuffled with a fixed seed.

    fold_ids(["a", "b", "a"], folds=2) -> e.g. array([1, 0, 1])
    """
    unique = list(dict.fromkeys(keys))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {key: int(order[i]) % folds for i, key in enumerate(unique)}
    return np.asarray([fold_of[key] for key in keys], dtype=np.int64)


def pick(mrr: np.ndarray, ndcg: np.ndarray, rows: np.ndarray | None = None) -> int:
    """Index of the candidate (row of mrr/ndcg [candidates, questions]) with the best mean over `rows`; first on ties."""
    a = mrr if rows is None else mrr[:, rows]
    b = ndcg if rows is None else ndcg[:, rows]
    means = np.round(a.mean(axis=1), 9), np.round(b.mean(axis=1), 9)
    return int(np.lexsort((-means[1], -means[0]))[0])  # lexsort is stable: the earliest of equals first


def rule(mrr: np.ndarray, ndcg: np.ndarray, plain: list[int], folds: np.ndarray, rows: np.ndarray | None = None) -> int:
    """The best of all candidates on `rows` if picking among all beats picking among the plain settings
    in cross-validation over `folds` there (each question scored by the pick made without its fold); else the best plain one."""
    rows = np.arange(mrr.shape[1]) if rows is None else rows
    base = plain[pick(mrr[plain], ndcg[plain], rows)]
    best = pick(mrr, ndcg, rows)
    if best == base:
        return base
    wide, narrow = 0.0, 0.0
    for fold in np.unique(folds[rows]):
        held, rest = rows[folds[rows] == fold], rows[folds[rows] != fold]
        if len(rest) == 0:
            return base
        wide += mrr[pick(mrr, ndcg, rest), held].sum()
        narrow += mrr[plain[pick(mrr[plain], ndcg[plain], rest)], held].sum()
    return best if wide > narrow + 1e-9 else base


def cross_validate(mrr: np.ndarray, ndcg: np.ndarray, folds: np.ndarray, plain: list[int]) -> np.ndarray:
    """Per question: the MRR@10 of the candidate the rule picks on the other folds."""
    scores = np.zeros(mrr.shape[1])
    for fold in np.unique(folds):
        held = folds == fold
        if held.all():  # a single fold: nothing to choose on
            return mrr[0].copy()
        scores[held] = mrr[rule(mrr, ndcg, plain, folds, np.flatnonzero(~held)), held]
    return scores


def paired_test(diff: np.ndarray, rounds: int = ROUNDS, seed: int = SEED,
                greater: bool = False) -> tuple[float, tuple[float, float]]:
    """p-value that the mean of `diff` is 0 (sign flips), and its 95% bootstrap interval.

    Two-sided; `greater`: one-sided, against "the mean is above 0" (a change is made only for a gain)."""
    diff = np.asarray(diff, dtype=np.float64)
    n = len(diff)
    if n == 0 or not diff.any():
        return 1.0, (0.0, 0.0)
    rng = np.random.default_rng(seed)
    observed, beyond, means = (diff.mean() if greater else abs(diff.mean())), 0, []
    for start in range(0, rounds, 1000):
        size = min(1000, rounds - start)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        flipped = signs @ diff / n
        beyond += int(((flipped if greater else np.abs(flipped)) >= observed - 1e-12).sum())
        means.append(diff[rng.integers(0, n, size=(size, n))].mean(axis=1))
    means = np.concatenate(means)
    return (beyond + 1) / (rounds + 1), (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def decide(mrr: np.ndarray, ndcg: np.ndarray, current: int, folds: np.ndarray, plain: list[int] | None = None,
           alpha: float = ALPHA) -> Decision:
    """The rule's in-sample and cross-validated figures, and whether the gain over `current` is significant.

    mrr, ndcg: [candidates, questions]. Candidates must be ordered with `current` first, so ties keep it.
    `plain`: the plain settings' indices (default: the current one alone).
    """
    plain = sorted({current, *(plain or [])})
    best, picked = pick(mrr, ndcg), rule(mrr, ndcg, plain, folds)
    held = cross_validate(mrr, ndcg, folds, plain)
    diff = held - mrr[current]
    p_value, interval = paired_test(diff, greater=True)
    gain = float(diff.mean()) if len(diff) else 0.0
    change = picked != current and gain > 0 and p_value < alpha
    return Decision(best, picked, current, float(mrr[best].mean()), float(held.mean()), float(mrr[current].mean()),
                    gain, interval, p_value, int(len(np.unique(folds))), change)

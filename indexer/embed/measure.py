"""Timing a path on the probe, and checking its vectors against PyTorch fp32's: the figures `choose` decides on.

The probe is fixed (English and Korean help-desk questions, 64 texts in bulk, one short question alone and
one long one: a customer's message of several sentences),
so two machines' figures compare. Nothing here decides; `indexer.embed.choose` does.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from indexer.embed.runners import NO_TORCH, RunPath

MIN_COSINE = 0.999      # every probe vector against PyTorch fp32's
MIN_TOP1 = 0.98         # share of probe texts whose nearest other probe text is fp32's
PROBE_SENTENCES = (
    "How do I reset my password if I no longer have access to my email?",
    "Can I change the delivery address after the order has shipped?",
    "The app crashes every time I open the settings page on my phone.",
    "Is there a discount for students or non-profit organisations?",
    "What payment methods do you accept for international orders?",
    "My invoice shows a charge I do not recognise, who can explain it?",
    "비밀번호를 잊어버렸는데 어떻게 다시 설정하나요?",
    "주문한 상품이 아직 도착하지 않았어요. 배송 조회는 어디서 하나요?",
    "환불은 보통 며칠이 걸리나요?",
    "영수증을 이메일로 다시 받을 수 있을까요?",
    "Where can I download last year's tax statement?",
    "Why was my account locked after three login attempts?",
)
PROBE_QUESTION = "how do I reset my password?"
# the tail of a question's time: the first 8 probe sentences as one message (~170 MiniLM tokens, which spell
# Hangul in jamo; ~110 for multilingual-e5-small), where a path's arithmetic rate shows, not its call overhead
PROBE_LONG_QUESTION = " ".join(PROBE_SENTENCES[:8])


@dataclass(frozen=True)
class Measurement:
    """One candidate's figures on the probe: texts/s in bulk, ms for one short and one long question, agreement
    with fp32."""

    path: RunPath
    bulk_per_s: float
    single_ms: float
    cosine_min: float
    top1_agreement: float
    error: str | None = None
    long_ms: float | None = None  # None: measured before the long question was (figures fed by tests)

    @property
    def question_ms(self) -> float:
        """What a path's questions cost: a short one and a long one, counted alike (the median and the tail)."""
        return self.single_ms + (self.long_ms or 0.0)

    @property
    def passes(self) -> bool:
        return self.error is None and self.cosine_min >= MIN_COSINE and self.top1_agreement >= MIN_TOP1

    def to_dict(self) -> dict:
        return {**asdict(self), "path": self.path.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "Measurement":
        return cls(**{**data, "path": RunPath(**data["path"])})


def measure(encoder, builder, paths: list[RunPath]) -> list[Measurement]:
    """Each path's speed on the probe and its vectors' agreement with the first (fp32) path's."""
    texts = [f"{a} {b}" if i % 3 else a for i, (a, b) in
             enumerate(zip(PROBE_SENTENCES * 6, PROBE_SENTENCES[3:] * 6 + PROBE_SENTENCES[:3] * 6))][:64]
    results, reference = [], None
    for path in paths:
        try:
            runner = builder.runner(path)
        except Exception as error:
            results.append(Measurement(path, 0.0, float("inf"), 0.0, 0.0, f"{type(error).__name__}: {str(error)[:100]}",
                                       float("inf")))
            continue
        vectors, bulk, single, long = _time(encoder, runner, texts, builder.keep_layers)
        if reference is None:
            reference = vectors
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        results.append(Measurement(path, bulk, single, cosine, _top1_agreement(vectors, reference), long_ms=long))
    return results


def _time(encoder, runner, texts: list[str], layer: int) -> tuple[np.ndarray, float, float, float]:
    """(probe vectors, best-of-2 bulk texts/s, median ms of one short question, of one long one) with `runner`
    in the encoder."""
    saved = encoder.__dict__.get("runner"), encoder.__dict__.get("path"), encoder.__dict__.get("batch_tokens")
    encoder.runner, encoder.path = runner, runner.path
    encoder.batch_tokens = 512 if runner.path.backend in NO_TORCH else 4096
    encoder.max_batch = 64
    try:
        embed = lambda batch: encoder.embed(batch, layer=layer, pooling="mean").vectors  # noqa: E731
        vectors = embed(texts)  # warm-up, and the vectors compared
        rounds = []
        for _ in range(2):
            start = time.perf_counter()
            embed(texts)
            rounds.append(time.perf_counter() - start)
        single, long = (_median_ms(lambda: embed([question]), runs) for question, runs in
                        ((PROBE_QUESTION, 24), (PROBE_LONG_QUESTION, 12)))
    finally:
        encoder.runner, encoder.path, encoder.batch_tokens = saved
    return vectors, len(texts) / min(rounds), single, long


def _median_ms(run, runs: int) -> float:
    """Median ms of `runs` calls, after two not counted."""
    run(), run()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def _top1_agreement(vectors: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows whose nearest other row is the same under both sets of vectors."""
    def nearest(matrix):
        scores = matrix @ matrix.T
        np.fill_diagonal(scores, -np.inf)
        return scores.argmax(axis=1)

    return float(np.mean(nearest(vectors) == nearest(reference)))

"""Embedding throughput: bertdex's encoder and full build against sentence-transformers `encode`, one run.

    python bench/throughput.py                       # 3,000 tatoeba sentences, quality on 3 BEIR sets
    python bench/throughput.py --count 1000 --no-quality --data /elsewhere/shared/data

Same texts, same model (the bundled all-MiniLM-L6-v2), same process. Prints sentences/s for
sentence-transformers, for the bertdex encoder on each backend (ONNX Runtime and PyTorch at each batch
budget and thread count; OpenVINO fp32, and bf16 where it runs it, at its default budget), one short and one
long question on each, for
`build_index` (embedding + SQLite + FTS5 + FAISS commit), the ratio to sentence-transformers,
cosine to PyTorch fp32 for each backend and precision, MRR@10 of each on labelled sets, and peak RSS.
Each rate is the best of --rounds runs, interleaved so that other load on the machine hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
QUALITY_SETS = ("bertfaq-covidfaq", "deepset-covid-qsim", "ko-question-pair")

from indexer.embed.encoder import Encoder  # noqa: E402
from bench.beir import read_beir  # noqa: E402
from indexer.embed.choose import native_bf16  # noqa: E402
from indexer.embed.resolve import resolve_recipe  # noqa: E402


def tatoeba_sentences(data: Path, count: int) -> list[str]:
    """`count` distinct English sentences of the Tatoeba LASER files, sampled with a fixed seed."""
    folder = data / "tatoeba-laser" / "data" / "tatoeba" / "v1"
    sentences = sorted({line.strip() for path in sorted(folder.glob("*.eng"))
                        for line in path.read_text(encoding="utf-8").splitlines() if line.strip()})
    if not sentences:
        raise SystemExit(f"no tatoeba sentences under {folder}: pass --data pointing at shared/data")
    rows = np.random.default_rng(0).choice(len(sentences), min(count, len(sentences)), replace=False)
    return [sentences[i] for i in rows]


def korean_sentences(data: Path, count: int) -> list[str]:
    """`count` distinct Korean sentences of ko-question-pair and KorSTS, sampled with a fixed seed."""
    pair = data / "ko-question-pair" / "beir"
    sentences = {json.loads(line)["text"] for name in ("corpus.jsonl", "queries.jsonl")
                 for line in (pair / name).read_text(encoding="utf-8").splitlines() if line.strip()}
    for split in sorted((data / "korsts" / "KorSTS").glob("sts-*.tsv")):
        for row in split.read_text(encoding="utf-8").splitlines()[1:]:
            sentences.update(row.split("\t")[5:7])
    sentences = sorted(s for s in sentences if s.strip())
    rows = np.random.default_rng(0).choice(len(sentences), min(count, len(sentences)), replace=False)
    return [sentences[i] for i in rows]


def rate(embed, texts: list[str]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = embed(texts)
    return len(texts) / (time.perf_counter() - started), vectors


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder (default: ../shared/data)")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-quality", action="store_true", help="skip MRR@10 per precision")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a packaged model (bertdex models) or a folder")
    parser.add_argument("--texts", choices=("tatoeba", "korean"), default="tatoeba",
                        help="English Tatoeba sentences, or Korean ko-question-pair and KorSTS sentences")
    args = parser.parse_args()
    print(f"# python bench/throughput.py {' '.join(sys.argv[1:])}")
    print(f"# {os.cpu_count()} cores, torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    texts = tatoeba_sentences(args.data, args.count) if args.texts == "tatoeba" else korean_sentences(args.data, args.count)
    peaks = matmul_peaks()
    print("# matmul peak, torch, " + ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in peaks.items()))
    user = resolve_recipe(args.model)  # the defaults exactly as a user gets them: no flag forced
    asking = Encoder(user.encoder.folder, max_length=user.recipe.max_length, keep_layers=user.recipe.layer,
                     purpose="question")  # what `bertdex query` and `serve` run
    print(f"# defaults: bulk {user.encoder.path.label()}, one question {asking.path.label()} ({user.encoder.path_reason})")
    resolved = resolve_recipe(args.model, precision="fp32")
    encoder, recipe = resolved.encoder, resolved.recipe
    tokens = [len(x) for x in encoder.tokenize(texts)[0]]
    print(f"# {len(texts)} {args.texts} sentences, {np.mean(tokens):.1f} tokens on average (max {max(tokens)})")

    def bertdex(enc: Encoder):
        return lambda batch: enc.embed(batch, layer=recipe.layer, pooling=recipe.pooling).vectors

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(encoder.folder), device="cpu")
    st_embed = lambda batch: st.encode(batch, batch_size=32, normalize_embeddings=True)  # noqa: E731
    budgets = [(4096, 64), (1024, 64), (512, 64)]  # the defaults: BATCH_TOKENS (PyTorch), ONNX_BATCH_TOKENS
    default_threads = torch.get_num_threads()
    thread_counts = sorted({1, default_threads})
    encoders = {(backend, threads): Encoder(encoder.folder, max_length=recipe.max_length, keep_layers=recipe.layer,
                                            precision="fp32", threads=threads, backend=backend)
                for backend in ("onnx", "torch") for threads in thread_counts}
    if native_bf16():
        encoders["bf16", default_threads] = Encoder(encoder.folder, max_length=recipe.max_length,
                                                    keep_layers=recipe.layer, precision="bf16")
    from indexer.embed import openvino_model

    for precision in ("fp32", "bf16") if openvino_model.bf16_offered() else ("fp32",):
        encoders[f"openvino {precision}", default_threads] = Encoder(
            encoder.folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision=precision,
            backend="openvino")
    best: dict[str, float] = {}
    defaults_key = f"bertdex defaults ({user.encoder.path.label()}), {default_threads} thread(s)"
    st_embed(texts[:64]), [bertdex(e)(texts[:64]) for e in [*encoders.values(), user.encoder]]  # warm all
    for _ in range(args.rounds):
        best[defaults_key] = max(best.get(defaults_key, 0), rate(bertdex(user.encoder), texts)[0])
        for threads in thread_counts:
            torch.set_num_threads(threads)
            best_key = f"sentence-transformers encode (batch 32), {threads} thread(s)"
            best[best_key] = max(best.get(best_key, 0), rate(st_embed, texts)[0])
            if ("bf16", threads) in encoders:
                key = f"bertdex bf16 torch, budget 4096 tokens / 64 rows, {threads} thread(s)"
                best[key] = max(best.get(key, 0), rate(bertdex(encoders["bf16", threads]), texts)[0])
            for precision in ("fp32", "bf16"):
                if (f"openvino {precision}", threads) in encoders:
                    key = f"bertdex {precision} openvino, budget 512 tokens / 64 rows, {threads} thread(s)"
                    best[key] = max(best.get(key, 0), rate(bertdex(encoders[f"openvino {precision}", threads]), texts)[0])
            for backend in ("onnx", "torch"):
                chosen = encoders[backend, threads]
                if chosen.backend != backend:
                    continue
                defaults = chosen.batch_tokens, chosen.max_batch
                for tokens_budget, rows in budgets:
                    chosen.batch_tokens, chosen.max_batch = tokens_budget, rows
                    key = f"bertdex fp32 {backend}, budget {tokens_budget} tokens / {rows} rows, {threads} thread(s)"
                    best[key] = max(best.get(key, 0), rate(bertdex(chosen), texts)[0])
                chosen.batch_tokens, chosen.max_batch = defaults
    torch.set_num_threads(default_threads)
    # weights' FLOPs a token: 2 x (4 h^2 attention projections + 2 h x FFN) per layer, ~21 MFLOP for MiniLM-L6
    config = encoder.config
    per_token = 2 * recipe.layer * (4 * config.hidden_size ** 2 + 2 * config.hidden_size * config.intermediate_size)
    flops = per_token * float(np.mean(tokens))
    print(f"# {per_token / 1e6:.1f} MFLOP a token ({recipe.layer} layers)")
    print(f"\n{'sentences/s':>12}  {'vs ST same threads':>18}  {'of fp32 peak':>12}  what")
    for key, value in best.items():
        threads = key.rsplit(", ", 1)[1]
        st_rate = best[f"sentence-transformers encode (batch 32), {threads}"]
        print(f"{value:12.0f}  {value / st_rate:17.2f}x  {value * flops / 1e9 / peaks['fp32']:11.0%}  {key}")
    st_best = max(v for k, v in best.items() if k.startswith("sentence"))
    ours_best_key = max((k for k in best if k.startswith("bertdex")), key=best.get)
    print(f"\nbest bertdex / best sentence-transformers: {best[ours_best_key] / st_best:.2f}x ({ours_best_key})")
    print(f"bertdex defaults / best sentence-transformers: {best[defaults_key] / st_best:.2f}x ({defaults_key})")
    one_question(asking, encoders, default_threads, recipe, st_embed)

    reference = bertdex(encoders["torch", default_threads])(texts)
    for label, vectors in (("bertdex onnx", bertdex(encoders["onnx", default_threads])(texts)), ("sentence-transformers", st_embed(texts))):
        cosine = np.sum(reference * vectors, 1)
        print(f"cosine bertdex torch fp32 vs {label}: min {cosine.min():.6f}, mean {cosine.mean():.6f}")
    build_rate(texts, resolved)
    precisions(texts, reference, recipe, encoder.folder, (ours_best_key, best[ours_best_key]))
    if not args.no_quality:
        quality(args.data, recipe, encoder.folder)
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB (whole run)")


def matmul_peaks(size: int = 1024, seconds: float = 1.0) -> dict[str, float]:
    """GFLOP/s of a square matmul in fp32 (and bf16 where the CPU has it natively) on torch's threads."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not native_bf16():
            continue
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        peaks[name] = 2 * size ** 3 * count / (time.perf_counter() - started) / 1e9
    return peaks


def one_question(default, encoders: dict, threads: int, recipe, st_embed) -> None:
    """Median ms to embed one short question, and one long one (the probe's, indexer.embed.measure): the
    defaults against every other path."""
    from indexer.embed.measure import PROBE_LONG_QUESTION, PROBE_QUESTION

    paths = {f"defaults for a question ({default.path.label()})": default,
             **{encoder.path.label(): encoder for (_, t), encoder in encoders.items() if t == threads}}
    for name, question in (("short", PROBE_QUESTION), ("long", PROBE_LONG_QUESTION)):
        tokens = len(default.tokenize([question])[0][0])
        embeds = {label: (lambda batch, e=encoder: e.embed(batch, layer=recipe.layer, pooling=recipe.pooling).vectors)
                  for label, encoder in paths.items()}
        embeds["sentence-transformers"] = st_embed
        samples: dict[str, list[float]] = {label: [] for label in embeds}
        for _ in range(4):  # 4 interleaved rounds of 10, so that the machine's state falls on every path alike
            for label, embed in embeds.items():
                samples[label] += samples_ms(embed, [question], 10)
        timings = {label: float(np.median(values)) for label, values in samples.items()}
        fastest = min(v for k, v in timings.items() if not k.startswith("sentence"))
        print(f"\none {name} question, {tokens} tokens (median of 40, in 4 interleaved rounds):")
        for label, value in timings.items():
            print(f"{value:8.2f} ms  {value / fastest:5.2f}x the fastest bertdex path  {label}")


def median_ms(embed, batch, runs: int = 40) -> float:
    return float(np.median(samples_ms(embed, batch, runs)))


def samples_ms(embed, batch, runs: int) -> list[float]:
    """ms of `runs` calls, after one not counted."""
    embed(batch)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        embed(batch)
        samples.append(1000 * (time.perf_counter() - started))
    return samples


def build_rate(texts: list[str], resolved) -> None:
    """The full `build_index`: read CSV -> embed -> SQLite + FTS5 -> FAISS file, one commit."""
    from indexer import build_index

    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "texts.jsonl"
        data.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
        report = build_index(data, Path(work) / "index", resolved=resolved, index_type="flat")
    print(f"build_index (embed + SQLite + FTS5 + FAISS commit): {report.rate:.0f} entries/s "
          f"({report.documents} entries in {report.seconds:.1f} s)")


def make_encoder(folder: Path, recipe, precision: str) -> Encoder:
    """An encoder at `precision`; int8 (not offered by bertdex) = its fp32 model with every Linear layer
    dynamically quantized: int8 weights per output channel, inputs quantized per batch (fbgemm on AVX2)."""
    if precision in ("fp32", "onnx"):
        return Encoder(folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision="fp32",
                       backend="onnx" if precision == "onnx" else "torch")
    if precision != "int8":
        return Encoder(folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision=precision)
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    encoder = Encoder(folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision="fp32", backend="torch")
    with warnings.catch_warnings():  # torch.ao announces its move to torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(encoder.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return encoder


def precisions(texts: list[str], reference: np.ndarray, recipe, folder: Path, best: tuple[str, float]) -> None:
    """Cosine to fp32 and speed for each other precision (bf16 is emulated on CPUs without AVX512-BF16/AMX), one
    run each (the interleaved table above is the one to compare), beside the best rate of that table."""
    print(f"\nprecision  sentences/s  cosine to fp32 (min / mean)   [native bf16 on this CPU: {native_bf16()}]")
    sample = texts if native_bf16() else texts[:100]
    for precision in ("bf16", "int8"):
        encoder = make_encoder(folder, recipe, precision)
        embed = lambda batch: encoder.embed(batch, layer=recipe.layer, pooling=recipe.pooling).vectors  # noqa: E731
        embed(sample[:32])
        speed, vectors = rate(embed, sample)
        cosine = np.sum(vectors * reference[: len(sample)], axis=1)
        print(f"{precision:9}  {speed:11.0f}  {cosine.min():.5f} / {cosine.mean():.5f}"
              f"{'   (on ' + str(len(sample)) + ' texts)' if len(sample) < len(texts) else ''}")
    print(f"{'(best above)':9}  {best[1]:11.0f}  ({best[0]})")


def quality(data: Path, recipe, folder: Path) -> None:
    """MRR@10 of dense search (corpus: title and text joined) per precision on labelled BEIR sets."""
    from search.quality.metrics import reciprocal_rank

    encoders = {p: make_encoder(folder, recipe, p) for p in ("fp32", "onnx", "int8")}
    print(f"\n{'set':22} {'fp32 torch':>11} {'fp32 onnx':>11} {'onnx - torch':>12} {'int8 torch':>11} {'int8 - fp32':>11}  (MRR@10)")
    for name in QUALITY_SETS:
        ids, docs, queries, qrels = read_beir(data / name / "beir", ("title", "text"))
        asked = list(queries)
        scores = {}
        for precision, encoder in encoders.items():
            embed = lambda batch: encoder.embed(batch, layer=recipe.layer, pooling=recipe.pooling).vectors  # noqa: E731
            similarity = embed([queries[q] for q in asked]) @ embed(docs).T
            top = np.argsort(-similarity, axis=1)[:, :10]
            scores[precision] = float(np.mean([reciprocal_rank([ids[j] for j in top[i]], qrels[q], 10)
                                               for i, q in enumerate(asked)]))
        print(f"{name:22} {scores['fp32']:11.4f} {scores['onnx']:11.4f} {scores['onnx'] - scores['fp32']:+12.4f} "
              f"{scores['int8']:11.4f} {scores['int8'] - scores['fp32']:+11.4f}")


if __name__ == "__main__":
    main()

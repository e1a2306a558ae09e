"""int8 for the bundled model: which quantization keeps the ranking, and is any of it faster than ONNX fp32?

    nice -n 10 python bench/int8.py                      # 2,000 tatoeba sentences, 3 labelled sets
    nice -n 10 python bench/int8.py --count 1000 --rounds 1 --sensitivity-texts 300
    nice -n 10 python bench/int8.py --rounds 4 --retime "L2 attn-out,L0 qkv"   # speed only, chosen units

A measurement study, not a path bertdex offers. Variants, each against ONNX Runtime fp32 (the fused
export bertdex caches):
  (a) ORT dynamic int8, per channel, every weight MatMul (fused graph: MatMul + Attention; plain graph)
  (b) (a) on the fused graph minus its most sensitive units: each of the 24 units (6 layers x qkv,
      attention out, FFN in, FFN out) is quantized alone and scored by cosine to fp32 on held-out texts;
      the least sensitive are kept int8 while the whole stays at min cosine >= 0.999 (strict) / 0.995 (loose)
  (c) ORT static int8, QDQ, per channel, MinMax calibration on --calibration held-out texts
  (d) PyTorch dynamic int8 (per channel) on all Linear layers, and minus the most sensitive (as in b)
  (e) documents int8, questions fp32 (MRR only: the bulk speed is the int8 variant's, the question fp32's),
      and the same with the top --rescore documents re-embedded fp32 at query time and re-ranked
For each: texts/s on --count tatoeba sentences (best of --rounds, interleaved), one question (median ms),
cosine to fp32 on those sentences, MRR@10 on the labelled sets (dense, brute-force cosine, corpus title +
" " + text). A variant is kept only if MRR@10 is within 0.005 of fp32 on every set and it is faster.
Speed is printed twice: wall-clock texts/s and texts per CPU-second of this process; on a shared machine
the second is the steadier (measured: wall ratios moved by +-40% between runs at load 5-15, CPU ones ~10%).
Held-out texts (sensitivity, calibration) come from tatoeba (outside the speed sample), banking77
questions and KorSTS sentences: none from the sets that are scored.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.beir import read_beir  # noqa: E402
from bench.throughput import DATA, QUALITY_SETS, median_ms, tatoeba_sentences  # noqa: E402
from indexer.embed import onnx_model  # noqa: E402
from indexer.embed.encoder import BATCH_TOKENS, ONNX_BATCH_TOKENS  # noqa: E402
from indexer.embed.resolve import resolve_recipe  # noqa: E402
from indexer.embed.runners import OnnxRunner, RunPath, TorchRunner  # noqa: E402
from search.quality.metrics import reciprocal_rank  # noqa: E402

TOLERANCE = 0.005      # MRR@10 may fall at most this much on any set
STRICT, LOOSE = 0.999, 0.995  # min cosine to fp32 on the held-out texts when picking units to keep int8


class Bench:
    """One encoder (tokenizer, batching, pooling) whose runner is swapped per variant."""

    def __init__(self, resolved, work: Path):
        self.encoder, self.recipe, self.work = resolved.encoder, resolved.recipe, work
        self.threads = self.encoder.threads
        self.torch_fp32 = TorchRunner(self.encoder.folder, self.recipe.layer, RunPath("torch", "fp32"), self.threads)
        self._int8 = None

    def embed(self, runner, texts: list[str]) -> np.ndarray:
        enc = self.encoder
        enc.runner, enc.path = runner, runner.path
        enc.batch_tokens = ONNX_BATCH_TOKENS if runner.path.backend == "onnx" else BATCH_TOKENS
        return enc.embed(texts, layer=self.recipe.layer, pooling=self.recipe.pooling).vectors

    def onnx(self, path: Path) -> OnnxRunner:
        return OnnxRunner(onnx_model.OnnxModel(path, self.threads), self.recipe.layer)

    def torch_int8(self, modules: list[str] | None) -> TorchRunner:
        """PyTorch dynamic int8, per output channel, on these Linear modules (None: all of them).

        The model is quantized once; a subset is the fp32 model's structure (weights shared, not copied)
        with those modules swapped for their quantized twins: the same arithmetic as quantizing them alone.
        """
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        fp32 = self.torch_fp32.model
        if self._int8 is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._int8 = quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                              dtype=torch.qint8)
        runner = self.torch_fp32.with_path(RunPath("torch", "fp32"))
        if modules is None:
            runner.model = self._int8
            return runner
        runner.model = copy.deepcopy(fp32, {id(t): t for t in (*fp32.parameters(), *fp32.buffers())})
        quantized = dict(self._int8.named_modules())
        for name in modules:
            parent, _, child = name.rpartition(".")
            setattr(runner.model.get_submodule(parent), child, quantized[name])
        return runner


def ort_dynamic(source: Path, target: Path, nodes: list[str] | None = None) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
                     reduce_range=False, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                     extra_options={"DefaultTensorType": 1})  # FLOAT: the fused graph's contrib ops defeat shape inference
    return target


def ort_static(source: Path, target: Path, feeds: list[dict], reduce_range: bool = False) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(feeds)

        def get_next(self):
            return next(self.rows, None)

    quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})
    return target


def onnx_units(path: Path) -> dict[str, str]:
    """{node name: 'L3 ffn-in'} for the weight MatMuls and Attention nodes of the fused graph."""
    import onnx

    units = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "Attention":
            units[node.name] = f"L{node.name.rsplit('_', 1)[1]} qkv"
        elif node.op_type == "MatMul" and "/layer." in node.name:
            layer = node.name.split("/layer.")[1].split("/")[0]
            role = "attn-out" if "/attention/output" in node.name else "ffn-in" if "/intermediate/" in node.name \
                else "ffn-out"
            units[node.name] = f"L{layer} {role}"
    return units


def torch_units(model) -> dict[str, str]:
    """{module name: 'L3 ffn-in'} for the Linear layers of the transformer layers."""
    roles = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
             "attention.output.dense": "attn-out", "intermediate.dense": "ffn-in", "output.dense": "ffn-out"}
    units = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("encoder.layer."):
            layer, rest = name.removeprefix("encoder.layer.").split(".", 1)
            units[name] = f"L{layer} {roles.get(rest, rest)}"
    return units


def sensitivity(bench: Bench, units: dict[str, str], build, texts: list[str], reference: np.ndarray):
    """[(1 - mean cosine, min cosine, unit)] with each unit alone quantized, least sensitive first."""
    scored = []
    for unit in units:
        cosine = np.sum(bench.embed(build([unit]), texts) * reference, axis=1)
        scored.append((1 - float(cosine.mean()), float(cosine.min()), unit))
    return sorted(scored)


def largest_prefix(bench: Bench, order: list[str], build, texts, reference, floor: float) -> int:
    """The most units (least sensitive first) quantized together with min cosine >= floor (binary search)."""
    low, high = 0, len(order)
    while low < high:
        middle = (low + high + 1) // 2
        cosine = np.sum(bench.embed(build(order[:middle]), texts) * reference, axis=1)
        if cosine.min() >= floor:
            low = middle
        else:
            high = middle - 1
    return low


def held_out(data: Path, exclude: set[str], count: int) -> list[str]:
    """Texts from none of the scored sets: 60% tatoeba (not in the speed sample), 20% banking77, 20% KorSTS."""
    english = [t for t in tatoeba_sentences(data, count * 4 + len(exclude)) if t not in exclude][: count * 3 // 5]
    banking = [json.loads(line)["text"] for line in (data / "banking77/beir/queries.jsonl").read_text().splitlines()]
    korean = [line.split("\t")[5] for line in (data / "korsts/KorSTS/sts-train.tsv").read_text().splitlines()[1:]]
    rng = np.random.default_rng(1)
    rest = count - len(english)
    return english + [banking[i] for i in rng.choice(len(banking), rest // 2, replace=False)] + \
        [korean[i] for i in rng.choice(len(korean), rest - rest // 2, replace=False)]


def load_set(beir: Path):
    ids, docs, queries, qrels = read_beir(beir, ("title", "text"))
    return list(queries.values()), [qrels[q] for q in queries], docs, ids


def mrr(questions: np.ndarray, docs: np.ndarray, rels, ids) -> float:
    top = np.argsort(-(questions @ docs.T), axis=1)[:, :10]
    return float(np.mean([reciprocal_rank([ids[j] for j in row], rel, 10) for row, rel in zip(top, rels)]))


def rescored_mrr(questions: np.ndarray, int8_docs: np.ndarray, fp32_docs: np.ndarray, rels, ids, depth: int) -> float:
    """Candidates: the top `depth` by int8 documents; their order: fp32 documents (re-embedded at query time)."""
    total = 0.0
    for question, rel in zip(questions, rels):
        candidates = np.argsort(-(int8_docs @ question))[:depth]
        order = candidates[np.argsort(-(fp32_docs[candidates] @ question))][:10]
        total += reciprocal_rank([ids[j] for j in order], rel, 10)
    return total / len(rels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder (default: ../shared/data)")
    parser.add_argument("--count", type=int, default=2000, help="tatoeba sentences timed (default 2000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sensitivity-texts", type=int, default=500)
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--rescore", type=int, default=30, help="documents re-embedded fp32 per question in (e)")
    parser.add_argument("--retime", nargs="+", metavar="UNITS", help="speed only: fp32, (a), (c) and (b) int8 on "
                        "each comma-separated list of fused-graph units ('L2 attn-out,L0 qkv'); no sensitivity, no MRR")
    parser.add_argument("--sets", nargs="+", default=list(QUALITY_SETS), help="labelled sets scored")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # onnxruntime.quantization's advice on pre-processing
    started = time.perf_counter()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    print(f"# nice -n {os.nice(0)} python bench/int8.py {' '.join(sys.argv[1:])}")
    print(f"# {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"onnxruntime {onnxruntime.__version__}, load average {os.getloadavg()[0]:.1f} at start")
    resolved = resolve_recipe(precision="fp32", backend="onnx")
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Bench(resolved, Path(scratch)), started)
    print(f"\n# {time.perf_counter() - started:.0f} s in all, load average {os.getloadavg()[0]:.1f} at the end")


def run(args, bench: Bench, started: float) -> None:
    enc, recipe, work = bench.encoder, bench.recipe, bench.work
    fused = onnx_model.find_cached(onnx_model.cached_path(onnx_model.DEFAULT_CACHE, recipe.model_checksum, recipe.layer,
                                                          enc.input_names()))
    if fused is None:
        raise SystemExit("no cached ONNX export: run `python cli.py info` (or any embedding) once first")
    texts = tatoeba_sentences(args.data, args.count)
    held = held_out(args.data, set(texts), args.sensitivity_texts + args.calibration)
    np.random.default_rng(2).shuffle(held)
    probe, calibration = held[: args.sensitivity_texts], held[args.sensitivity_texts:]
    if args.retime:
        return retime(args, bench, fused, texts, calibration)
    fp32 = bench.onnx(fused)
    reference = bench.embed(fp32, probe)
    counter = iter(range(10 ** 6))
    plain = work / "plain.onnx"
    onnx_model._export(bench.torch_fp32.model, plain, enc.input_names())

    def onnx_build(nodes):
        return bench.onnx(ort_dynamic(fused, work / f"b{next(counter)}.onnx", nodes))

    variants = {"onnx fp32 (fused, bertdex's)": (fp32, "the cached export"),
                "onnx fp32 plain graph": (bench.onnx(plain), "torch.onnx.export, no transformer fusions"),
                "torch fp32": (bench.torch_fp32, "PyTorch eager")}
    variants["(a) ort dyn int8 fused"] = (bench.onnx(ort_dynamic(fused, work / "a-fused.onnx")),
                                          "quantize_dynamic(fused, op_types=[MatMul, Attention], per_channel=True, "
                                          "reduce_range=False, weight_type=QInt8)")
    variants["(a) ort dyn int8 plain"] = (bench.onnx(ort_dynamic(plain, work / "a-plain.onnx")),
                                          "quantize_dynamic(plain, same options)")
    for label, units, build in (("(b) ort dyn int8 fused", onnx_units(fused), onnx_build),
                                ("(d) torch dyn int8", torch_units(bench.torch_fp32.model), bench.torch_int8)):
        scored = sensitivity(bench, units, build, probe, reference)
        print(f"\n{label}: each unit alone int8, cosine to fp32 on {len(probe)} held-out texts "
              f"({time.perf_counter() - started:.0f} s)\n{'1 - mean':>10} {'min':>9}  unit")
        for loss, low, unit in scored:
            print(f"{loss:10.2e} {low:9.5f}  {units[unit]}")
        order = [unit for _, _, unit in scored]
        if label.startswith("(d)"):
            variants[f"{label} all Linear"] = (bench.torch_int8(None), "quantize_dynamic(model, {Linear: "
                                               "per_channel_dynamic_qconfig}, dtype=qint8) (bench/throughput's int8)")
        for name, floor in (("strict", STRICT), ("loose", LOOSE)):
            keep = largest_prefix(bench, order, build, probe, reference, floor)
            kept = order[:keep]
            print(f"{name}: {keep} of {len(order)} units int8 keep min cosine >= {floor}: "
                  + ", ".join(units[u] for u in kept))
            if keep:
                variants[f"{label} {name} {keep}/{len(order)}"] = (build(kept), "int8 only on: " + ", ".join(
                    units[u] for u in kept))
    feeds = calibration_feeds(enc, calibration)
    for graph, source in (("fused", fused), ("plain", plain)):
        variants[f"(c) ort static int8 {graph}"] = (bench.onnx(ort_static(source, work / f"c-{graph}.onnx", feeds)),
                                                    f"quantize_static({graph}, {len(calibration)} held-out texts, "
                                                    "QDQ, op_types=[MatMul], MatMulConstBOnly, per_channel=True, "
                                                    "reduce_range=False, QUInt8 activations, QInt8 weights, MinMax)")
    print(f"\n# {len(variants)} variants built ({time.perf_counter() - started:.0f} s)")
    figures = measure(bench, variants, texts, args.rounds)
    print(f"# timed ({time.perf_counter() - started:.0f} s)")
    scores = quality(bench, variants, args.data, args.rescore, args.sets)
    report(variants, figures, scores, args, bench, texts)


def calibration_feeds(enc, texts: list[str]) -> list[dict]:
    """The encoder's inputs for `texts`, 16 to a padded batch, for quantize_static's calibration."""
    feeds = []
    for start in range(0, len(texts), 16):
        encoded = enc.tokenizer(texts[start:start + 16], padding=True, truncation=True, max_length=enc.max_length,
                                return_tensors="np")
        feeds.append({name: encoded[name].astype(np.int64) if name in encoded else
                      np.zeros_like(encoded["input_ids"], dtype=np.int64) for name in enc.input_names()})
    return feeds


def retime(args, bench: Bench, fused: Path, texts: list[str], calibration: list[str]) -> None:
    """Speed only, for the fused-graph candidates: fp32, (a), (c), and (b) on each --retime unit list."""
    units = {label: node for node, label in onnx_units(fused).items()}
    variants = {"onnx fp32 (fused, bertdex's)": (bench.onnx(fused), ""),
                "(a) ort dyn int8 fused": (bench.onnx(ort_dynamic(fused, bench.work / "a.onnx")), "")}
    for number, labels in enumerate(args.retime):
        chosen = [units[label.strip()] for label in labels.split(",")]
        variants[f"(b) {len(chosen)}/{len(units)} units"] = (
            bench.onnx(ort_dynamic(fused, bench.work / f"b{number}.onnx", chosen)), labels)
    feeds = calibration_feeds(bench.encoder, calibration)
    variants["(c) ort static int8 fused"] = (bench.onnx(ort_static(fused, bench.work / "c.onnx", feeds)), "")
    figures = measure(bench, variants, texts, args.rounds)
    base = figures[next(iter(variants))]
    print(f"\n{len(texts)} tatoeba sentences, best of {args.rounds} interleaved rounds, {bench.threads} thread(s)")
    print(f"{'texts/s':>8} {'x fp32':>6} {'/cpu-s':>6} {'x fp32':>6} {'1 q ms':>7} {'cos min':>8}  variant")
    for name, f in figures.items():
        print(f"{f['rate']:8.0f} {f['rate'] / base['rate']:5.2f}x {f['cpu_rate']:6.0f} {f['cpu_rate'] / base['cpu_rate']:5.2f}x "
              f"{f['single']:7.2f} {f['cos_min']:8.5f}  {name} {variants[name][1]}")


def measure(bench: Bench, variants: dict, texts: list[str], rounds: int) -> dict[str, dict]:
    """texts/s (best of `rounds`, interleaved), one question (median ms of 30), cosine to fp32 on `texts`."""
    figures = {name: {"rate": 0.0, "cpu_rate": 0.0} for name in variants}
    for runner, _ in variants.values():
        bench.embed(runner, texts[:64])
    for _ in range(rounds):
        for name, (runner, _) in variants.items():
            begin, cpu = time.perf_counter(), time.process_time()
            figures[name]["vectors"] = bench.embed(runner, texts)
            figures[name]["rate"] = max(figures[name]["rate"], len(texts) / (time.perf_counter() - begin))
            figures[name]["cpu_rate"] = max(figures[name]["cpu_rate"], len(texts) / (time.process_time() - cpu))
    reference = figures[next(iter(variants))]["vectors"]
    for name, (runner, _) in variants.items():
        cosine = np.sum(figures[name].pop("vectors") * reference, axis=1)
        figures[name].update(cos_min=float(cosine.min()), cos_mean=float(cosine.mean()),
                             single=median_ms(lambda batch: bench.embed(runner, batch),
                                              ["how do I reset my password?"], runs=30))
    return figures


def quality(bench: Bench, variants: dict, data: Path, depth: int, sets: list[str]) -> dict:
    """{set: {variant: (MRR both int8, MRR fp32 questions x int8 documents, the latter re-scored fp32)}}."""
    fp32 = next(iter(variants.values()))[0]
    scores = {}
    for name in sets:
        questions, rels, docs, ids = load_set(data / name / "beir")
        q32, d32 = bench.embed(fp32, questions), bench.embed(fp32, docs)
        scores[name] = {}
        for label, (runner, _) in variants.items():
            if "fp32" in label and runner is not fp32:
                continue  # another fp32 path: its vectors are fp32's to ~1e-6 (bench/throughput.py)
            qv, dv = bench.embed(runner, questions), bench.embed(runner, docs)
            scores[name][label] = (mrr(qv, dv, rels, ids), mrr(q32, dv, rels, ids),
                                   rescored_mrr(q32, dv, d32, rels, ids, depth))
        scores[name]["rescore ms"] = median_ms(lambda batch: bench.embed(fp32, batch), docs[:depth], runs=10)
    return scores


def report(variants: dict, figures: dict, scores: dict, args, bench: Bench, texts: list[str]) -> None:
    base_name = next(iter(variants))
    base = figures[base_name]
    tokens = np.mean([len(x) for x in bench.encoder.tokenize(texts)[0]])
    print(f"\n{len(texts)} tatoeba sentences ({tokens:.1f} tokens on average), {bench.threads} thread(s); "
          f"MRR@10 both sides by the variant; delta = variant - fp32 onnx; keep = every |delta| <= {TOLERANCE} "
          "and faster than onnx fp32 (wall clock); /cpu-s = texts per CPU-second of this process (all threads)")
    sets = "".join(f" {name[:18]:>18}" for name in args.sets)
    print(f"{'texts/s':>8} {'x fp32':>6} {'/cpu-s':>6} {'x fp32':>6} {'1 q ms':>7} {'cos min':>8} {'cos mean':>8}{sets}  keep  variant")
    for name in variants:
        f = figures[name]
        cells, ok = "", True
        for set_name in args.sets:
            if name not in scores[set_name]:
                cells += f" {'(fp32, not scored)':>18}"
                continue
            value = scores[set_name][name][0]
            delta = value - scores[set_name][base_name][0]
            ok &= delta >= -TOLERANCE
            cells += f" {value:9.4f} ({delta:+.4f})"
        keep = ok and f["rate"] > base["rate"]
        print(f"{f['rate']:8.0f} {f['rate'] / base['rate']:5.2f}x {f['cpu_rate']:6.0f} {f['cpu_rate'] / base['cpu_rate']:5.2f}x "
              f"{f['single']:7.2f} {f['cos_min']:8.5f} "
              f"{f['cos_mean']:8.5f}{cells}  {'yes' if keep and 'fp32' not in name else ' - '}   {name}")
    print(f"\n(e) documents by the variant (bulk speed above), questions onnx fp32 ({base['single']:.2f} ms); "
          f"then the top {args.rescore} re-embedded fp32 and re-ranked "
          f"(+{np.mean([scores[s]['rescore ms'] for s in args.sets]):.1f} ms a question on average)")
    print(f"{'':8}{sets}  keep  |{sets}  keep  variant")
    for name in [name for name in variants if "fp32" not in name]:
        row = ""
        for column in (1, 2):
            ok = True
            for set_name in args.sets:
                value = scores[set_name][name][column]
                delta = value - scores[set_name][base_name][0]
                ok &= delta >= -TOLERANCE
                row += f" {value:9.4f} ({delta:+.4f})"
            row += f"  {'yes' if ok and figures[name]['rate'] > base['rate'] else ' - '}   " + ("|" if column == 1 else "")
        print(f"{'':8}{row}{name}")
    print("\nrecipes:")
    for name, (_, recipe) in variants.items():
        print(f"  {name}: {recipe}")


if __name__ == "__main__":
    main()

"""The measured choice of a path: fed the figures of the machines we have seen, and measured for real once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.embed.choose import candidates, choice_file, choose, choose_paths
from indexer.embed.measure import Measurement
from indexer.embed.runners import RunPath

ONNX, TORCH, BF16 = RunPath("onnx", "fp32"), RunPath("torch", "fp32"), RunPath("torch", "bf16")
OPENVINO, OPENVINO16 = RunPath("openvino", "fp32"), RunPath("openvino", "bf16")
CUDA16 = RunPath("torch", "fp16", "cuda")


def figures(path, bulk, single, cosine=0.99999, top1=1.0, error=None, long=None):
    return Measurement(path, bulk, single, cosine, top1, error, long)


# Figures from bench/throughput.py on the CPUs seen (texts/s in bulk, ms for one question).
ZEN3_AVX2 = [figures(TORCH, 330, 16.0), figures(ONNX, 552, 4.5)]
XEON_AVX512_BF16 = [figures(TORCH, 610, 9.0), figures(ONNX, 876, 5.7), figures(BF16, 423, 16.4, cosine=0.99990)]


def test_zen3_keeps_onnx_fp32():
    assert choose(ZEN3_AVX2)[0] == ONNX


def test_a_cpu_flagged_bf16_that_runs_bf16_slower_keeps_fp32():
    path, reason = choose(XEON_AVX512_BF16)
    assert path == ONNX and "torch bf16 (cpu) 423/s" in reason


def test_bf16_wins_where_it_measures_fastest_and_agrees_with_fp32():
    amx = [figures(TORCH, 600, 9.0), figures(ONNX, 870, 5.0), figures(BF16, 1900, 4.8, cosine=0.9995)]
    assert choose(amx)[0] == BF16


def test_a_path_that_moves_the_vectors_is_refused_however_fast():
    moved = [figures(TORCH, 600, 9.0), figures(ONNX, 870, 5.0), figures(BF16, 2000, 2.0, cosine=0.997)]
    path, reason = choose(moved)
    assert path == ONNX and "refused" in reason
    reordered = [figures(TORCH, 600, 9.0), figures(BF16, 2000, 2.0, top1=0.9)]
    assert choose(reordered)[0] == TORCH


def test_bulk_and_one_question_each_take_their_fastest_path():
    gpu = [figures(TORCH, 600, 9.0), figures(ONNX, 870, 5.0), figures(CUDA16, 20000, 6.5)]
    assert (choose_paths(gpu).bulk, choose_paths(gpu).question) == (CUDA16, ONNX)
    gpu_quick = [figures(TORCH, 600, 9.0), figures(ONNX, 870, 5.6), figures(CUDA16, 20000, 5.0)]
    assert (choose_paths(gpu_quick).bulk, choose_paths(gpu_quick).question) == (CUDA16, ONNX)  # within 15%: ONNX starts without torch
    gpu_quicker = [figures(TORCH, 600, 9.0), figures(ONNX, 870, 6.0), figures(CUDA16, 20000, 3.0)]
    assert choose_paths(gpu_quicker).question == CUDA16
    # the CPU: bf16 1.9x fp32 in bulk but 3.5x slower for one question -> bf16 in bulk, ONNX for questions
    bf16_bulk = [figures(TORCH, 330, 16.0), figures(ONNX, 552, 4.5), figures(BF16, 1050, 15.8, cosine=0.99992)]
    chosen = choose_paths(bf16_bulk)
    assert (chosen.bulk, chosen.question) == (BF16, ONNX) and choose(bf16_bulk)[0] == BF16
    moved = [figures(TORCH, 330, 16.0), figures(ONNX, 552, 4.5), figures(BF16, 1050, 2.0, cosine=0.99)]
    assert (choose_paths(moved).bulk, choose_paths(moved).question) == (ONNX, ONNX)


def test_a_question_counts_its_tail_and_a_process_asking_once_starts_on_onnx_runtime():
    # `bertdex doctor` on the 2-core AVX512-BF16 EPYC (texts/s, ms for the short and the long probe question)
    epyc = [figures(TORCH, 82, 13.6, long=56.5), figures(ONNX, 178, 3.0, long=23.8),
            figures(OPENVINO, 186, 3.7, long=23.5), figures(OPENVINO16, 314, 2.7, cosine=0.99997, long=14.7),
            figures(BF16, 173, 9.7, cosine=0.99997, long=38.7)]
    chosen = choose_paths(epyc)
    assert (chosen.bulk, chosen.question, chosen.once) == (OPENVINO16, OPENVINO16, ONNX)
    assert [chosen.path(p) for p in ("bulk", "question", "once")] == [OPENVINO16, OPENVINO16, ONNX]
    # quicker on the short question by its call overhead alone, twice as slow on the long one: not kept
    overhead = [figures(TORCH, 82, 13.6, long=56.5), figures(ONNX, 178, 2.6, long=29.9),
                figures(OPENVINO16, 314, 3.2, cosine=0.99997, long=14.5)]
    assert choose_paths(overhead).question == OPENVINO16
    # a CPU whose bf16 runs slower (the Xeon without AMX): fp32 for everything
    slow_bf16 = [figures(TORCH, 610, 9.0, long=40.0), figures(ONNX, 876, 5.7, long=30.0),
                 figures(OPENVINO16, 500, 9.5, cosine=0.9999, long=52.0)]
    assert (choose_paths(slow_bf16).bulk, choose_paths(slow_bf16).question, choose_paths(slow_bf16).once) == (ONNX,) * 3
    # no ONNX Runtime path passing: the process asking once takes the question path
    no_onnx = [figures(TORCH, 82, 13.6, long=56.5), figures(ONNX, 0, float("inf"), 0, 0, error="no export", long=float("inf")),
               figures(OPENVINO, 186, 3.7, long=23.5)]
    assert choose_paths(no_onnx).once == choose_paths(no_onnx).question == OPENVINO
    # the question path on PyTorch (a GPU): a process asking once still starts on ONNX Runtime, without torch
    gpu = [figures(TORCH, 600, 9.0), figures(ONNX, 870, 6.0), figures(CUDA16, 20000, 3.0)]
    assert (choose_paths(gpu).question, choose_paths(gpu).once) == (CUDA16, ONNX)


def test_a_failed_candidate_is_skipped_and_none_passing_is_an_error():
    broken = [figures(TORCH, 600, 9.0), figures(ONNX, 0.0, float("inf"), 0.0, 0.0, error="RuntimeError: no export")]
    assert choose(broken)[0] == TORCH
    with pytest.raises(ValueError):
        choose([figures(BF16, 900, 3.0, cosine=0.9)])


def test_candidates_follow_the_machine_and_the_forced_options():
    plain = candidates("auto", "auto", native_bf16=False, cuda=False, onnx=True)
    assert plain == [TORCH, ONNX]
    flagged = candidates("auto", "auto", native_bf16=True, cuda=False, onnx=True)
    assert flagged == [TORCH, ONNX, BF16]
    assert candidates("fp32", "auto", native_bf16=True, cuda=False, onnx=True) == [TORCH, ONNX]
    assert candidates("auto", "torch", native_bf16=True, cuda=False, onnx=True) == [TORCH, BF16]
    assert candidates("bf16", "onnx", native_bf16=True, cuda=False, onnx=True) == []
    assert CUDA16 in candidates("auto", "auto", native_bf16=False, cuda=True, onnx=False)
    # OpenVINO compiles ONNX Runtime's export: it comes with it, bf16 only where OpenVINO says the CPU runs it
    both = dict(native_bf16=True, cuda=False, onnx=True, openvino=True)
    assert candidates("auto", "auto", **both, openvino_bf16=True) == [TORCH, ONNX, OPENVINO, OPENVINO16, BF16]
    assert candidates("auto", "auto", **both, openvino_bf16=False) == [TORCH, ONNX, OPENVINO, BF16]
    assert candidates("fp32", "auto", **both, openvino_bf16=True) == [TORCH, ONNX, OPENVINO]
    assert candidates("auto", "openvino", **both, openvino_bf16=True) == [OPENVINO, OPENVINO16]
    assert candidates("auto", "auto", native_bf16=False, cuda=False, onnx=False, openvino=True) == [TORCH]


def test_a_changed_machine_gets_another_decision_file(tmp_path):
    machine = {"cpu": "AMD EPYC", "flags": "abc", "cores": 2, "gpu": None, "versions": {"torch": "2.13.0"}}
    same = choice_file(tmp_path, "ab12", 6, "auto", "auto", dict(machine))
    assert same == choice_file(tmp_path, "ab12", 6, "auto", "auto", dict(machine))
    for change in ({"cores": 16}, {"flags": "abd"}, {"cpu": "Intel Xeon"}, {"versions": {"torch": "2.14.0"}},
                   {"gpu": "NVIDIA H100"}):
        assert choice_file(tmp_path, "ab12", 6, "auto", "auto", {**machine, **change}) != same
    assert choice_file(tmp_path, "ab12", 6, "fp32", "auto", machine) != same


def test_the_machine_key_is_read_without_importing_torch():
    import subprocess
    import sys

    code = "import sys; from indexer.embed.choose import machine_key; m = machine_key(); print('torch' in sys.modules, m['versions']['torch'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import torch

    assert result.stdout.split() == ["False", torch.__version__]


@pytest.mark.slow
def test_the_first_encoder_measures_and_saves_the_choice_the_next_one_reuses_it(resolved, tmp_path):
    from indexer.embed.encoder import Encoder

    folder, layer = resolved.encoder.folder, resolved.recipe.layer
    first = Encoder(folder, keep_layers=layer, cache=tmp_path, precision="fp32")
    (saved,) = (tmp_path / "choices").glob("*.json")
    data = json.loads(saved.read_text())
    fp32 = {("torch", "fp32", "cpu"), ("onnx", "fp32", "cpu"), ("openvino", "fp32", "cpu")}
    assert {tuple(m["path"].values()) for m in data["measurements"]} == fp32
    assert all(m["bulk_per_s"] > 0 and m["long_ms"] > m["single_ms"] > 0 and m["cosine_min"] > 0.9999
               for m in data["measurements"])
    assert first.path == RunPath(**data["chosen"]) and "measured fastest here" in first.path_reason
    assert RunPath(**data["question"]) in {TORCH, ONNX, OPENVINO} and data["fast_tokenizer"] is True
    assert RunPath(**data["once"]) == ONNX  # it passes, and starts quickest

    data["chosen"] = {"backend": "torch", "precision": "fp32", "device": "cpu"}  # the file decides, not a re-measure
    saved.write_text(json.dumps(data))
    second = Encoder(folder, keep_layers=layer, cache=tmp_path, precision="fp32")
    assert second.path == TORCH and len(second.measurements) == 3
    vectors = [e.embed(["where is my parcel?"], layer=layer, pooling="mean").vectors for e in (first, second)]
    assert float(np.dot(vectors[0][0], vectors[1][0])) >= 0.99999


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU on this machine: the GPU paths are measured only where one is")
def test_cuda_paths_are_measured_and_agree_with_cpu_fp32(resolved, tmp_path):
    from indexer.embed.encoder import Encoder

    folder, layer = resolved.encoder.folder, resolved.recipe.layer
    encoder = Encoder(folder, keep_layers=layer, cache=tmp_path)
    measured = {m.path: m for m in encoder.measurements}
    assert {RunPath("torch", "fp32", "cuda"), CUDA16} <= set(measured)
    assert measured[CUDA16].bulk_per_s > 0 and measured[CUDA16].cosine_min >= 0.99
    gpu = Encoder(folder, keep_layers=layer, cache=tmp_path, backend="torch", precision="fp32")
    cpu = Encoder(folder, keep_layers=layer, cache=None, backend="onnx")
    texts = ["where is my parcel?", "비밀번호를 잊어버렸어요"]
    a, b = (e.embed(texts, layer=layer, pooling="mean").vectors for e in (gpu, cpu))
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.9999

"""What this machine is, as the saved choice of run paths knows it: its key (CPU model, flags, cores, GPUs,
library versions, read without importing the libraries) and the file a choice is kept in.

Light on purpose (no numpy, no torch): a question reads its saved choice before anything heavy is loaded
(indexer.embed.choose decides and writes; search.early reads it to start the question's model early).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

CHOICE_FORMAT = 4  # 2: a bulk and a question path, the export's name, the tokenizer check; 3: exports of format 2;
# 4: OpenVINO among the candidates, and a third path, once (a process that asks one question)


def machine_key() -> dict:
    """What decides speed here: CPU model, its flags, cores, GPUs, the libraries' versions (read without importing them)."""
    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = {}
    for package in ("torch", "numpy", "onnxruntime", "openvino"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:12], "cores": cores, "gpu": _gpus(),
            "versions": versions}


def _gpus() -> str | None:
    """The NVIDIA GPUs the driver lists (their models), None when there is none."""
    try:
        models = sorted(line.split(":", 1)[1].strip() for info in Path("/proc/driver/nvidia/gpus").glob("*/information")
                        for line in info.read_text().splitlines() if line.startswith("Model:"))
    except OSError:
        return None
    return ", ".join(models) or None


def native_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): only then is bf16 worth measuring."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choice_file(cache: Path, checksum: str, keep_layers: int, precision: str, backend: str, machine: dict) -> Path:
    """Where the choice for this model, layer count, forced options and machine is kept (they decide the candidates)."""
    key = json.dumps([CHOICE_FORMAT, machine, precision, backend], sort_keys=True)
    return cache / "choices" / f"{checksum}-L{keep_layers}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def saved_paths(cache: Path, checksum: str, keep_layers: int) -> dict | None:
    """{"bulk": label, "question": label, "once": label} of this machine's saved choice for a model and layer count (with
    no option forced), or None when it has not measured them yet. Reads one small file; imports nothing."""
    try:
        saved = json.loads(choice_file(cache, checksum, keep_layers, "auto", "auto", machine_key()).read_text())
        return {purpose: "{backend} {precision} ({device})".format(**{"device": "cpu", **saved[key]})
                for purpose, key in (("bulk", "chosen"), ("question", "question"), ("once", "once"))}
    except (OSError, ValueError, KeyError, TypeError):
        return None

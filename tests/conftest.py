"""Shared fixtures: the real bundled model, loaded once per session, and small real indexes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BERTDEX = [sys.executable, str(ROOT / "cli.py")]

# Where the model does not matter the suite runs the small English model (6 layers: about twice as fast
# as the default multilingual one): in this process and in every `bertdex` it starts ($BERTDEX_MODEL).
# tests/test_default_model.py runs the real default, with neither set.
SUITE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
os.environ["BERTDEX_MODEL"] = SUITE_MODEL


def pytest_configure(config):
    import indexer.embed.models as models

    models.DEFAULT_MODEL = SUITE_MODEL


@pytest.fixture(scope="session")
def resolved():
    """The default recipe and an encoder for it (the real all-MiniLM-L6-v2)."""
    from indexer.embed.resolve import resolve_recipe

    return resolve_recipe()


@pytest.fixture(scope="session")
def encoder(resolved):
    return resolved.encoder


@pytest.fixture(scope="session")
def faq_index_master(tmp_path_factory):
    """The English example FAQ indexed once (question embedded, group = answer id)."""
    from indexer import build_index

    folder = tmp_path_factory.mktemp("faq") / "index"
    build_index(EXAMPLES / "faq_en.csv", folder, text_fields=["question"], group_field="group")
    return folder


@pytest.fixture
def faq_index(faq_index_master, tmp_path):
    """A private copy of the example FAQ index that a test may change."""
    folder = tmp_path / "index"
    shutil.copytree(faq_index_master, folder, ignore=shutil.ignore_patterns("write.lock"))
    return folder


def run_cli(*args, input: str | None = None, check: bool = False, env: dict | None = None, timeout: float = 300):
    """Run `bertdex ARGS` as a real subprocess; returns the CompletedProcess."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    result = subprocess.run([*BERTDEX, *map(str, args)], input=input, capture_output=True, text=True,
                            env=environment, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"bertdex {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result

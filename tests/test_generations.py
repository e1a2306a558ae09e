"""One generation per answer: a long-lived searcher follows another process's re-embedding (tune)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from search import Searcher
from search.server.batching import MicroBatcher

QUESTIONS = ["I can't remember my password", "Do you sell my personal information?", "how much is shipping?"]


def answers(results) -> list[list[tuple[str, float]]]:
    return [[(hit.key, round(hit.score, 4)) for hit in hits] for hits in results]


def reembed_elsewhere(folder, layer: int, pooling: str) -> subprocess.Popen:
    code = ("import sys; from indexer.ingest.reembed import reembed_index; "
            f"reembed_index(sys.argv[1], layer={layer}, pooling={pooling!r})")
    return subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_searcher_follows_a_reembed_by_another_process(faq_index):
    searcher = Searcher(faq_index)  # its own question path, as a server's (the session encoder is a bulk one)
    batcher = MicroBatcher(searcher)
    try:
        previous = answers(batcher.search(QUESTIONS, 3))
        for layer, pooling in ((3, "mean"), (6, "mean-max")):  # another layer; then twice the dimension
            process = reembed_elsewhere(faq_index, layer, pooling)
            during = []
            while process.poll() is None:
                during.append(answers(batcher.search(QUESTIONS, 3)))  # the server's path: vectors made by the batcher
            assert process.returncode == 0, process.stderr.read()
            fresh = answers(Searcher(faq_index).search_many(QUESTIONS, 3))
            assert answers(batcher.search(QUESTIONS, 3)) == fresh
            assert answers(searcher.search_many(QUESTIONS, 3)) == fresh
            assert searcher.manifest.recipe.layer == layer and searcher.manifest.recipe.pooling == pooling
            odd = [found for found in during if found not in (previous, fresh)]
            assert during and not odd, (previous, fresh, odd[:2])
            assert fresh != previous
            previous = fresh
    finally:
        batcher.close()

"""Past one machine: resumable bulk loads (killed and run again), embedding on a local Ray, compressed indexes."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest

from conftest import ROOT
from indexer import BertdexError, add_documents, build_index
from indexer.store.verify import verify_index
from scale_helpers import assert_same_index
from test_lifecycle import ForkServer, entries, state, write_jsonl

COUNT = 300
LONG = " ".join(["the parcel was sent to the wrong address and nobody answered the phone"] * 20)


def bulk_rows(count: int, version: int = 0) -> list[dict]:
    """Short questions, and every 50th a text long enough to be split into windows."""
    rows = entries(0, count, version)
    for row in rows[::50]:
        row["text"] = f"{row['text']} {LONG}"
    return rows


@pytest.fixture(scope="module")
def fp32():
    """The default recipe at fp32: equal vectors are asked of fp32 (bf16 moves them ~1e-5 with the batch)."""
    from indexer.embed.resolve import resolve_recipe

    return resolve_recipe(precision="fp32")


@pytest.fixture(scope="module")
def bulk(tmp_path_factory, fp32):
    """300 entries (v0 and v1 texts) and the index an uninterrupted in-process build makes of each."""
    folder = tmp_path_factory.mktemp("bulk")
    made = {}
    for version in (0, 1):
        data = write_jsonl(folder / f"v{version}.jsonl", bulk_rows(COUNT, version))
        build_index(data, folder / f"reference{version}", resolved=fp32)
        made[version] = (data, folder / f"reference{version}")
    return made


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for this module; its address lets forked writers join it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


class ResumeServer(ForkServer):
    def run_until(self, request: dict, kill_at: int | None) -> dict:
        """Run one write; SIGKILL it once it reports its `kill_at`-th chunk. -> its last events."""
        self.process.stdin.write(json.dumps({**request, "progress": True}) + "\n")
        self.process.stdin.flush()
        events = [self.next_event()]
        while events[-1]["event"] not in ("exit",):
            event = events[-1]
            if event["event"] == "progress" and kill_at is not None and sum(e["event"] == "progress" for e in events) == kill_at:
                os.kill(next(e["pid"] for e in events if e["event"] == "start"), signal.SIGKILL)
            events.append(self.next_event())
        assert not [e for e in events if e["event"] == "error"], events
        return next((e for e in events if e["event"] == "committed"), {})


def committed_prefix(folder, rows: list[dict], checkpoint: int) -> int:
    """How many entries a killed load left: a whole number of checkpoints, in input order."""
    found = state(folder) if (folder / "bertdex.db").exists() else {}
    count = len(found)
    assert found == {row["id"]: row["text"] for row in rows[:count]}
    assert count % checkpoint == 0 or count == len(rows)
    return count


@pytest.mark.slow
def test_a_killed_bulk_load_resumes_and_ends_equal_to_an_uninterrupted_one(tmp_path, bulk):
    """kill -9 a build at random chunks; each run of the same command continues from the last checkpoint,
    skipping (not re-embedding) what is committed. Then the same for `index --replace` over an old index."""
    rng = random.Random(17)
    server = ResumeServer("--precision", "fp32")
    try:
        for version, replace in ((0, False), (1, True)):
            data, reference = bulk[version]
            rows = bulk_rows(COUNT, version)
            request = {"op": "build", "folder": str(tmp_path / "index"), "data": str(data), "checkpoint": 60,
                       "chunk": 30, "replace": replace}
            resumed = []
            for kill_at in (rng.randrange(1, 5), rng.randrange(3, 10)):
                report = server.run_until(request, kill_at=kill_at)
                if report:
                    break
                resumed.append(committed_prefix(tmp_path / "index", rows, 60))
            assert any(resumed), "no kill came after a checkpoint"
            if not report:
                committed = committed_prefix(tmp_path / "index", rows, 60)
                report = server.run_until(request, kill_at=None)
            assert report["unchanged"] == committed and report["documents"] == COUNT
            assert verify_index(tmp_path / "index").ok
            assert_same_index(tmp_path / "index", reference)
            if version == 0:  # an interrupted load is finished by its own command, not another
                server.run_until(request | {"replace": True, "data": str(bulk[1][0])}, kill_at=3)
                with pytest.raises(BertdexError, match="holds an interrupted `bertdex index` of .*v1.jsonl"):
                    add_documents(tmp_path / "index", data, checkpoint=60)
    finally:
        server.close()


@pytest.mark.slow
def test_ray_build_equals_in_process_and_a_killed_worker_is_retried(tmp_path, bulk, fp32, local_ray):
    import ray

    from indexer.ingest.distributed import NAME

    data, reference = bulk[0]
    pids = []

    def kill_one_worker(done, total):
        if done == 0:  # the input is checked, the Ray workers are not started yet
            return
        actor = ray.get_actor(sorted(n for n in ray.util.list_named_actors() if n.startswith(NAME))[0])
        pids.append(ray.get(actor.pid.remote()))
        if len(pids) == 1:  # other pieces are queued on it: they must be run again, once
            os.kill(pids[0], signal.SIGKILL)

    report = build_index(data, tmp_path / "index", resolved=fp32, ray="local", chunk_size=32,
                         progress=kill_one_worker)
    assert report.documents == COUNT and report.added == COUNT
    assert pids[-1] != pids[0], "the killed worker was not restarted"
    assert verify_index(tmp_path / "index").ok
    assert_same_index(tmp_path / "index", reference)
    assert not [n for n in ray.util.list_named_actors() if n.startswith(NAME)], "actors left behind"


@pytest.mark.slow
def test_a_killed_ray_load_resumes_and_ends_equal(tmp_path, bulk, local_ray):
    data, reference = bulk[0]
    rows = bulk_rows(COUNT)
    request = {"op": "build", "folder": str(tmp_path / "index"), "data": str(data), "checkpoint": 100, "chunk": 32,
               "ray": local_ray}
    server = ResumeServer("--precision", "fp32")
    try:
        assert not server.run_until(request, kill_at=5)  # 160 written: one checkpoint (128) committed
        committed = committed_prefix(tmp_path / "index", rows, 32)
        assert committed == 128
        report = server.run_until(request, kill_at=None)
    finally:
        server.close()
    assert report["unchanged"] == 128 and report["documents"] == COUNT
    assert_same_index(tmp_path / "index", reference)


# -- compressed index types ---------------------------------------------------------------------------


@pytest.mark.parametrize("index_type", ["sq8", pytest.param("ivfpq", marks=pytest.mark.slow)])  # PQ training: ~5 s
def test_compressed_types_reach_the_recall_target_and_delete(index_type):
    from scale_helpers import built, clustered, numpy_top

    from indexer.store import ann

    points = clustered(6_300, dimension=64)
    vectors, queries = points[:6_000], points[6_000:]
    ids = np.arange(6_000, dtype=np.int64) * 3 + 7
    index, kind, params = built(index_type, vectors, ids)
    assert kind == index_type == ann.kind(index)
    assert index_type == "sq8" or params["fast_scan"] and params["pq_bits"] == 4  # 4-bit fast-scan codes
    depth = "k_factor" if index_type == "sq8" else "nprobe"
    assert params["recall_at_10"] >= ann.RECALL_TARGET and params[depth] >= 1
    _, found = ann.search(index, queries, 10)
    recall = np.mean([len(set(found[i]) & set(numpy_top(vectors, ids, q, 10))) / 10 for i, q in enumerate(queries)])
    assert recall >= 0.97
    scores, top = ann.search(index, queries[:5], 1)  # re-scored exactly: the float32 inner product
    assert np.allclose(scores[:, 0], [vectors[(top[i][0] - 7) // 3] @ queries[i] for i in range(5)], atol=1e-5)

    removed = ids[::4]
    index, kind, params = ann.finish(index, kind, params, removed)
    left, left_vectors = ann.stored(index)
    assert kind == index_type and index.ntotal == 4500 and not np.isin(removed, left).any()
    assert np.allclose(left_vectors[np.argsort(left)], vectors[~np.isin(ids, removed)])
    _, found = ann.search(index, vectors[::4][:50], 5)
    assert not np.isin(found, removed).any() and params["recall_at_10"] >= ann.RECALL_TARGET


def test_a_small_ivfpq_index_keeps_8_bit_codes_and_answers_exactly():
    from scale_helpers import built, clustered, numpy_top

    from indexer.store import ann

    points = clustered(620, dimension=64)
    vectors, queries = points[:600], points[600:]
    ids = np.arange(600, dtype=np.int64) + 1
    index, kind, params = built("ivfpq", vectors, ids)  # too few points to train 4-bit fast-scan codes well
    assert kind == "ivfpq" and not params.get("fast_scan") and params["recall_at_10"] >= ann.RECALL_TARGET
    scores, found = ann.search(index, queries, 10)
    assert np.mean([len(set(found[i]) & set(numpy_top(vectors, ids, q, 10))) / 10 for i, q in enumerate(queries)]) >= 0.97
    assert np.allclose(scores[:, 0], [vectors[found[i][0] - 1] @ queries[i] for i in range(len(queries))], atol=1e-5)


def test_auto_compresses_only_large_collections_that_do_not_fit_in_memory():
    from indexer.store import ann

    gigabyte = 2**30
    assert ann.choose("auto", 10_000_000, "hnsw", 384, 24 * gigabyte) == "ivfpq"  # 15 GB + graph > half of 24
    assert ann.choose("auto", 10_000_000, "hnsw", 384, 128 * gigabyte) == "hnsw"
    assert ann.choose("auto", 900_000, "flat", 384, gigabyte) == "hnsw"  # small: never compressed
    assert ann.choose("auto", 5_000, "flat", 384, gigabyte // 100) == "flat"
    assert ann.choose("auto", 4_000_000, "ivfpq", 384, 24 * gigabyte) == "ivfpq"  # no flipping near the line


@pytest.mark.slow
def test_an_sq8_index_serves_from_a_mapped_file_and_takes_updates(tmp_path, resolved):
    from indexer.store.folder import IndexWriter, open_manifest
    from search import Searcher

    rows = entries(0, 300)
    build_index(write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "index", resolved=resolved, index_type="sq8")
    searcher = Searcher(tmp_path / "index", encoder=resolved.encoder)
    assert searcher.vectors.kinds() == ["sq8"] and searcher.manifest.index_params["recall_at_10"] >= 0.98
    assert open_manifest(tmp_path / "index").codebook  # the trained codes new segments are coded with
    assert searcher.search(rows[42]["text"], k=1)[0].key == "k42"
    changed = [{"id": "k42", "text": "how do I cancel my subscription"}]
    report = add_documents(tmp_path / "index", write_jsonl(tmp_path / "b.jsonl", changed), encoder=resolved.encoder)
    assert (report.updated, report.documents) == (1, 300)
    hit = Searcher(tmp_path / "index", encoder=resolved.encoder).search("how do I cancel my subscription", k=1)[0]
    assert hit.key == "k42" and hit.score > 0.99
    assert verify_index(tmp_path / "index").ok
    with IndexWriter.open(tmp_path / "index") as writer:  # compact: one sq8 segment from the same codes
        compacted = writer.merge(0)
    assert [r["kind"] for r in compacted.segments] == ["sq8"] and compacted.deleted == ()
    hit = Searcher(tmp_path / "index", encoder=resolved.encoder).search("how do I cancel my subscription", k=1)[0]
    assert hit.key == "k42" and hit.score > 0.99 and verify_index(tmp_path / "index").ok


# -- serving with several processes -------------------------------------------------------------------


@pytest.mark.slow
def test_serve_workers_answers_from_several_processes_read_only(faq_index):
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", str(faq_index), "--port", str(port),
                               "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "BERTDEX_API_KEY": "k" * 24})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        pids, searches = set(), 0
        deadline = time.monotonic() + 120
        # fresh connections land on either worker once both are up (the second may still be loading its model
        # when the first answers /health): ask until both have answered, not a fixed number of times
        while len(pids) < 2 and time.monotonic() < deadline:
            with httpx.Client(base_url=base, timeout=60) as http:
                answer = http.post("/search", json={"question": "I forgot my password", "k": 3})
                assert answer.status_code == 200 and answer.json()["results"][0]["hits"]
                searches += 1
                pids.add(http.get("/info").json()["server"].get("pid"))
        refused = httpx.post(f"{base}/documents", json={"documents": [{"key": "x", "text": "y"}]},
                             headers={"X-API-Key": "k" * 24})
        assert refused.status_code == 403
        assert len(pids) == 2, pids
        # /metrics answers for both workers, whichever one a scrape reaches (prometheus_client's multiprocess mode)
        from prometheus_client.parser import text_string_to_metric_families

        for _ in range(4):
            with httpx.Client(base_url=base, timeout=60) as http:
                scraped = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                           for family in text_string_to_metric_families(http.get("/metrics").text)
                           for sample in family.samples}
            assert scraped[("bertdex_requests_total", (("method", "POST"), ("route", "/search"), ("status", "200")))] == searches
            assert scraped[("bertdex_questions_total", (("answered", "yes"),))] == searches
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
def test_a_pair_index_built_on_ray_equals_the_one_built_here(tmp_path, local_ray):
    """A recipe with a companion model (indexer.embed.pair): each actor embeds by both models."""
    from conftest import EXAMPLES
    from indexer.embed.models import E5
    from search import Searcher
    from search.searcher import open_manifest

    options = dict(text_fields=["question"], group_field="group", companion=E5, companion_share=0.3)
    build_index(EXAMPLES / "faq_en.csv", tmp_path / "here", **options)
    build_index(EXAMPLES / "faq_en.csv", tmp_path / "ray", ray="local", ray_workers=1, **options)
    questions = ["I forgot my password", "how do I get a refund", "비밀번호를 잊었어요"]
    here, there = Searcher(tmp_path / "here"), Searcher(tmp_path / "ray")
    for mine, theirs in zip(here.search_many(questions, 5, mode="dense"), there.search_many(questions, 5, mode="dense")):
        assert [h.key for h in mine] == [h.key for h in theirs]
        assert [h.score for h in mine] == pytest.approx([h.score for h in theirs], abs=1e-5)
    assert open_manifest(tmp_path / "ray").recipe == here.manifest.recipe and here.manifest.recipe.companion is not None
    here.close(), there.close()


@pytest.mark.slow
def test_ivfpq_tuning_stops_short_of_every_list_where_rescoring_more_reaches_the_target():
    """Gaussian blobs, near-equidistant neighbours: nprobe alone at 16 candidates a result needed every list
    (x6 margin), an exhaustive scan; the held-out half and the k_factor ladder find fewer lists that reach
    0.99. Unstructured vectors do need every list, and the params say so."""
    from scale_helpers import built, numpy_top

    from indexer.store import ann

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((400, 384)).astype(np.float32)
    points = centres[rng.integers(0, 400, 20_200)] + 0.8 * rng.standard_normal((20_200, 384)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    vectors, queries, ids = points[:20_000], points[20_000:], np.arange(20_000, dtype=np.int64)
    index, kind, params = built("ivfpq", vectors, ids)
    assert kind == "ivfpq" and params["nprobe"] < params["nlist"] and "note" not in params
    assert params["k_factor"] in (16, 32, 64, 128, 256) and params["recall_at_10"] >= ann.TUNE_TARGET
    _, found = ann.search(index, queries, 10)
    recall = np.mean([len(set(found[i]) & set(numpy_top(vectors, ids, q, 10))) / 10 for i, q in enumerate(queries)])
    assert recall >= 0.97

    noise = rng.standard_normal((5_000, 384)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    _, _, params = built("ivfpq", noise, np.arange(5_000, dtype=np.int64))
    assert params["nprobe"] == params["nlist"] and "every code is read" in params["note"]

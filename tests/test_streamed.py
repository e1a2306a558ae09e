"""A build of a compressed type keeps its float32 vectors on disk (indexer.store.streamed): it answers as the
in-memory build of the same vectors, checkpoints commit flat segments, and a killed build resumes."""

from __future__ import annotations

import random

import faiss
import numpy as np
import pytest

from indexer import build_index, delete_documents
from indexer.store import ann, streamed
from indexer.store.folder import IndexWriter, Manifest, connect, open_manifest, open_vectors
from indexer.store.verify import verify_index
from scale_helpers import assert_same_index, clustered
from search import Searcher
from test_lifecycle import entries, state, unnamed_files, write_jsonl

DIMENSION = 32


@pytest.fixture
def tiny_spool(monkeypatch):
    """Spool past 300 vectors, read and code 250 at a time: a small build streams as a 10M one does."""
    monkeypatch.setattr(streamed, "SPOOL_VECTORS", 300)
    monkeypatch.setattr(streamed, "CHUNK", 250)


def synthetic_manifest(index_type: str) -> Manifest:
    from indexer.embed.recipe import Recipe

    recipe = Recipe(model="synthetic (tests/test_streamed.py)", model_checksum="synthetic", lowercase=False, layer=6,
                    pooling="mean", exclude_special=False, max_length=256, dimension=DIMENSION)
    return Manifest(recipe=recipe, index_type=index_type)


def write(writer, vectors: np.ndarray, keys: list[str]) -> None:
    documents = [{"key": key, "text": f"entry {key}", "fields": {}} for key in keys]
    writer.write_documents(documents, vectors, np.arange(len(keys)), np.zeros((len(keys), 2), dtype=np.int64))


def build(folder, index_type: str, vectors: np.ndarray, *, stream: bool, checkpoint: int | None = None,
          replaced: dict[int, np.ndarray] | None = None) -> list[Manifest]:
    """Entries e0..eN with `vectors`, 200 a write; `replaced`: entries written again (new vectors) at the end.
    With `checkpoint`, a load that commits every that many entries. -> the manifest of each commit."""
    from indexer.ingest.bulk import _set_loading

    commits = []
    with IndexWriter.open(folder, new=synthetic_manifest(index_type), stream=stream) as writer:
        if checkpoint:
            _set_loading(writer, {"op": "index", "source": "synthetic"})
        for start in range(0, len(vectors), 200):
            write(writer, vectors[start:start + 200], [f"e{i}" for i in range(start, min(start + 200, len(vectors)))])
            if checkpoint and (start + 200) % checkpoint == 0 and start + 200 < len(vectors):
                commits.append(writer.commit())
        for row, vector in (replaced or {}).items():
            write(writer, vector[None, :], [f"e{row}"])
        if checkpoint:
            _set_loading(writer, None)
        commits.append(writer.commit())
    return commits


def committed(folder) -> Manifest | None:
    """The committed manifest, or None when no commit happened (the build was killed before its first)."""
    from indexer.errors import BertdexError

    try:
        return open_manifest(folder)
    except BertdexError:
        return None


def answers(folder, queries: np.ndarray, k: int = 10):
    manifest = open_manifest(folder)
    return ann.search(open_vectors(folder, manifest, flags=faiss.IO_FLAG_MMAP_IFC), queries, k)


@pytest.mark.parametrize("index_type", ["ivfpq", "sq8"])
def test_a_streamed_build_answers_as_the_in_memory_build_of_the_same_vectors(tmp_path, tiny_spool, index_type):
    points = clustered(2_450, dimension=DIMENSION)
    vectors, queries = points[:2_400], points[2_400:]
    replaced = {5: points[2_400], 1_700: points[2_401]}  # written again: e5's first vector is committed, e1700's spooled
    build(tmp_path / "memory", index_type, vectors, stream=False, replaced=replaced)
    commits = build(tmp_path / "streamed", index_type, vectors, stream=True, checkpoint=800, replaced=replaced)

    assert [len(m.segments) for m in commits] == [1, 2, 1]  # two checkpoints of flat segments, then one of the type
    assert {r["kind"] for m in commits[:2] for r in m.segments} == {"flat"} and commits[0].codebook == {}
    final, memory = commits[-1], open_manifest(tmp_path / "memory")
    assert final.segments[0]["kind"] == index_type and final.deleted == () and final.codebook
    assert final.vectors == memory.vectors == 2_400
    params, expected = dict(final.index_params), dict(memory.index_params)
    # the exact answers tuning checks against come from chunks here: a tie at the 10th place may fall apart
    assert abs(params.pop("recall_at_10") - expected.pop("recall_at_10")) <= 1e-3 and params == expected
    scores, ids = answers(tmp_path / "streamed", queries)
    expected_scores, expected_ids = answers(tmp_path / "memory", queries)
    assert (ids == expected_ids).all() and np.allclose(scores, expected_scores, atol=1e-6)
    segments = open_vectors(tmp_path / "streamed", final)
    assert np.array_equal(segments.vectors_of(np.asarray([2_401, 2_402])), points[2_400:2_402])  # the new vectors
    assert not np.isin([6, 1_701], segments.stored()[0]).any()  # e5's and e1700's first ones dropped
    assert unnamed_files(tmp_path / "streamed") == set()  # the spool and the checkpoint segments are gone
    report = verify_index(tmp_path / "streamed")
    assert report.ok, report.problems


def test_the_streamed_file_is_the_one_faiss_writes(tmp_path):
    """The hand-written segment reads back in FAISS with its tuned depth, and FAISS writes it byte for byte."""
    points = clustered(1_500, dimension=DIMENSION)
    ids = np.arange(1, 1_501, dtype=np.int64)
    spool = streamed.FlatSpool(tmp_path / "a.spool", DIMENSION)
    spool.add(points[:700], ids[:700])
    spool.add(points[700:], ids[700:])
    assert np.array_equal(spool.close(), ids)
    flat = faiss.read_index(str(tmp_path / "a.spool"))
    assert flat.ntotal == 1_500 and np.array_equal(faiss.vector_to_array(flat.id_map), ids)
    assert np.array_equal(faiss.serialize_index(flat), np.fromfile(tmp_path / "a.spool", dtype=np.uint8))
    index, params, _ = streamed.write_compressed(tmp_path / "b.faiss", streamed.Sources([tmp_path / "a.spool"], ids[:0]),
                                                 "ivfpq", {}, chunk=400)
    read = faiss.read_index(str(tmp_path / "b.faiss"))
    inner = faiss.downcast_index(read.index)
    assert inner.k_factor == params.get("k_factor", 16) and faiss.downcast_index(inner.base_index).nprobe == params["nprobe"]
    assert np.array_equal(faiss.serialize_index(read), np.fromfile(tmp_path / "b.faiss", dtype=np.uint8))


def test_index_of_an_ivfpq_type_streams_and_answers_as_in_memory(tmp_path, resolved, tiny_spool, monkeypatch):
    rows = entries(0, 400)
    data = write_jsonl(tmp_path / "a.jsonl", rows)
    build_index(data, tmp_path / "streamed", resolved=resolved, index_type="ivfpq", checkpoint=150, chunk_size=50)
    monkeypatch.setattr("indexer.ingest.build.streams", lambda *args: False)
    build_index(data, tmp_path / "memory", resolved=resolved, index_type="ivfpq", chunk_size=50)  # the same batches
    questions = ["question 7 about refunds", "shipping to another address", "password version 0"]
    found = {}
    for name in ("streamed", "memory"):
        hits = Searcher(tmp_path / name, encoder=resolved.encoder).search_many(questions, 10, min_score=float("-inf"))
        found[name] = [[(hit.key, round(hit.score, 5)) for hit in row] for row in hits]
    assert found["streamed"] == found["memory"] and len(found["memory"][0]) == 10
    manifest = open_manifest(tmp_path / "streamed")
    assert [r["kind"] for r in manifest.segments] == ["ivfpq"] and manifest.vectors == 400
    assert verify_index(tmp_path / "streamed", text_sample=5, encoder=resolved.encoder).ok


@pytest.mark.slow
def test_a_killed_streamed_build_leaves_the_pre_build_or_a_resumable_state(tmp_path, resolved):
    """kill -9 an ivfpq build at random chunks and at each step of its last commit; the same command then
    ends with the index an uninterrupted build makes."""
    from test_scale import ResumeServer

    rows = entries(0, 300)
    data = write_jsonl(tmp_path / "a.jsonl", rows)
    spool = {"spool": 100, "index_type": "ivfpq", "checkpoint": 60, "chunk": 30}
    server = ResumeServer("--precision", "fp32")
    try:
        reference = tmp_path / "reference"
        assert server.run_until({"op": "build", "folder": str(reference), "data": str(data), **spool}, kill_at=None)
        rng = random.Random(5)
        for trial, kill in enumerate([rng.randrange(1, 10), "before-commit", "after-commit", "renamed"]):
            folder = tmp_path / f"index-{trial}"
            request = {"op": "build", "folder": str(folder), "data": str(data), **spool}
            if isinstance(kill, int):
                assert not server.run_until(request, kill_at=kill)
            else:  # the nth of that step: the fifth commit is the last (four checkpoints of 60, then the end)
                assert not server.run_until({**request, "die_at": kill, "nth": 5}, kill_at=None)
            manifest = committed(folder)
            if manifest is not None:  # the checkpoints before the kill, or all of it
                found = state(folder)
                assert found == {row["id"]: row["text"] for row in rows[:len(found)]}
                assert len(found) % 60 == 0 and verify_index(folder).ok
            if manifest is None or manifest.settings.loading is not None:
                report = server.run_until(request, kill_at=None)
                assert report["documents"] == 300 and report["unchanged"] == (len(found) if manifest else 0), kill
            else:  # killed after its last COMMIT: done; the checkpoints' files and the spool are left over
                assert kill == "after-commit" and verify_index(folder).ok
                assert unnamed_files(folder) == {f"vectors.{g}.faiss" for g in range(1, 5)} | {"vectors.5.spool"}
                delete_documents(folder, ["absent"])  # the next writer removes them
            assert verify_index(folder).ok and unnamed_files(folder) == set()
            assert_same_index(folder, reference)
            assert [r["kind"] for r in open_manifest(folder).segments] == ["ivfpq"]
    finally:
        server.close()


def test_compact_of_an_ivfpq_index_streams_its_segments_into_one_and_drops_the_deleted(tmp_path, tiny_spool):
    from indexer.store.folder import compact_index

    points = clustered(1_560, dimension=DIMENSION)
    vectors, queries = points[:1_500], points[1_500:]
    folder = tmp_path / "index"
    build(folder, "ivfpq", vectors[:1_400], stream=True)
    with IndexWriter.open(folder) as writer:  # a write: one flat segment, and deletions in the ivfpq one
        write(writer, vectors[1_400:], [f"e{i}" for i in range(1_400, 1_500)])
        writer.delete([f"e{i}" for i in range(0, 1_500, 7)])
        writer.commit()
    before = open_manifest(folder)
    assert [r["kind"] for r in before.segments] == ["ivfpq", "flat"] and before.deleted
    result = compact_index(folder)
    after = open_manifest(folder)
    assert result["kind"] == "ivfpq" and len(after.segments) == 1 and after.deleted == ()
    assert after.codebook["file"] != before.codebook["file"] and unnamed_files(folder) == set()
    live = np.setdiff1d(np.arange(1_500), np.arange(0, 1_500, 7))
    assert after.vectors == len(live) and after.index_params["recall_at_10"] >= ann.RECALL_TARGET
    scores, ids = answers(folder, queries)
    assert not np.isin(ids - 1, np.arange(0, 1_500, 7)).any()
    assert np.allclose(scores, np.einsum("qkd,qd->qk", vectors[ids - 1], queries), atol=1e-5)  # exact scores
    truth = [set(live[np.argsort(-(vectors[live] @ q), kind="stable")[:10]] + 1) for q in queries]
    assert np.mean([len(truth[i] & set(ids[i])) / 10 for i in range(len(queries))]) >= 0.97
    assert verify_index(folder).ok


def test_repair_and_reembed_of_an_ivfpq_index_stream_its_vectors_and_answer_as_before(tmp_path, resolved, tiny_spool,
                                                                                   monkeypatch):
    """A whole rewrite of a compressed index (repair, re-embed) spools its float32 vectors to disk as its build did."""
    from indexer.ingest.reembed import reembed_index
    from indexer.store.repair import repair_index

    folder = tmp_path / "ivfpq"
    build_index(write_jsonl(tmp_path / "a.jsonl", entries(0, 400)), folder, resolved=resolved, index_type="ivfpq",
                chunk_size=50)
    questions = ["question 7 about refunds", "shipping to another address", "password version 0"]

    def found():
        hits = Searcher(folder, encoder=resolved.encoder).search_many(questions, 10, min_score=float("-inf"))
        return [{hit.key: hit.score for hit in row} for row in hits]

    def same(now: list[dict], then: list[dict], close: float) -> bool:
        """The same answers: nearly all the top 10, the best score and every shared hit's score within `close`
        (bf16 in bulk: a vector moves ~1e-3 with the batch it is embedded in, and a rewrite batches anew, so
        two hits that close may trade places)."""
        return all(len(a.keys() & b.keys()) >= 8 and abs(max(a.values()) - max(b.values())) <= close
                   and all(abs(a[key] - b[key]) <= close for key in a.keys() & b.keys()) for a, b in zip(now, then))

    bf16 = 5e-3  # re-embedding loads its own encoder, on this machine's saved bulk path: bf16 where it measured fastest
    close = 1e-5 if resolved.encoder.path.precision == "fp32" else bf16  # repair: the encoder given

    before, spools = found(), []

    class CountedSpool(streamed.FlatSpool):
        def __init__(self, path, dimension):
            spools.append(path.name)
            super().__init__(path, dimension)

    monkeypatch.setattr(streamed, "FlatSpool", CountedSpool)
    repair_index(folder, encoder=resolved.encoder)
    assert spools and same(found(), before, close)
    recipe = open_manifest(folder).recipe
    spools.clear()
    reembed_index(folder, layer=recipe.layer, pooling=recipe.pooling)
    manifest = open_manifest(folder)
    assert spools and [r["kind"] for r in manifest.segments] == ["ivfpq"] and manifest.vectors == 400
    assert same(found(), before, bf16) and verify_index(folder, text_sample=5, encoder=resolved.encoder).ok


def test_merged_segments_of_a_compressed_index_are_coded_with_its_codebook(tmp_path):
    """Eight writes of 150 fold into one segment of 1,200 (minus a deletion; the base of 10,000 is a tier
    above, so it stays): in an ivfpq index the new segment is coded with the index's codebook (its search a
    fraction of a flat scan's), answers with exact scores, and never brings back what was deleted, in the
    base segment or in the folded ones."""
    folder, points = tmp_path / "ivfpq", clustered(10_000 + 8 * 150 + 20, dimension=DIMENSION)
    vectors, queries = points[:-20], points[-20:]
    build(folder, "ivfpq", vectors[:10_000], stream=True)
    base = open_manifest(folder)
    for step in range(8):
        with IndexWriter.open(folder) as writer:
            start = 10_000 + 150 * step
            write(writer, vectors[start:start + 150], [f"e{i}" for i in range(start, start + 150)])
            if step == 3:
                writer.delete(["e12", "e10010"])  # one in the base segment, one in the first added segment
            writer.commit()
    manifest = open_manifest(folder)
    assert [r["kind"] for r in manifest.segments] == ["ivfpq", "ivfpq"]
    assert manifest.segments[0] == base.segments[0] and manifest.segments[1]["ntotal"] == 1_199
    live = np.array([i for i in range(len(vectors)) if i not in (12, 10_010)])
    scores, found = answers(folder, queries)
    ids_to_rows = {}
    db = connect(folder, readonly=True)
    for passage, key in db.execute("SELECT p.id, d.key FROM passages p JOIN documents d ON d.id = p.document_id"):
        ids_to_rows[passage] = int(key[1:])
    db.close()
    rows = np.vectorize(ids_to_rows.get)(found)
    assert not np.isin(rows, [12, 10_010]).any()
    exact = np.argsort(-(queries @ vectors[live].T), axis=1)[:, :10]
    recall = np.mean([len(set(rows[i]) & set(live[exact[i]])) / 10 for i in range(len(queries))])
    assert recall >= 0.9
    assert np.allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[rows]), atol=1e-5)

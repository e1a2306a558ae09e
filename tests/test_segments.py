"""Writes that cost what they add: no-op writes commit nothing; a write adds one segment; merges fold them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import EXAMPLES, run_cli
from indexer import add_documents, build_index, delete_documents
from indexer.store import segments
from indexer.store.segments import files_of
from indexer.store.folder import IndexWriter, connect, open_manifest, open_vectors
from indexer.store.verify import verify_index
from search import Searcher
from test_lifecycle import ForkServer, entries, state, unnamed_files, write_jsonl


def files(folder) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.name.startswith("vectors.")}


# -- no-op writes -------------------------------------------------------------------------------------


def test_an_add_of_unchanged_entries_commits_nothing(faq_index):
    before, written = open_manifest(faq_index), files(faq_index)
    report = add_documents(faq_index, EXAMPLES / "faq_en.csv", text_fields=["question"], group_field="group")
    assert (report.committed, report.unchanged, report.added, report.updated) == (False, 50, 0, 0)
    assert open_manifest(faq_index) == before and files(faq_index) == written


def test_a_delete_of_absent_keys_commits_nothing_and_says_so(faq_index):
    before, written = open_manifest(faq_index), files(faq_index)
    assert delete_documents(faq_index, ["nope", "nor-this"]) == (0, ["nope", "nor-this"])
    assert open_manifest(faq_index) == before and files(faq_index) == written
    result = run_cli("delete", faq_index, "nope", check=True)
    assert result.stdout.strip() == "deleted 0 entries; nothing changed, nothing written"
    assert open_manifest(faq_index).generation == before.generation
    result = run_cli("add", faq_index, EXAMPLES / "faq_en.csv", "--text-field", "question", "--group-field", "group",
                     check=True)
    assert "nothing changed (50 unchanged), nothing written; 50 entries, 50 vectors" in result.stdout
    assert open_manifest(faq_index) == before and files(faq_index) == written
    assert delete_documents(faq_index, ["en-001", "nope"]) == (1, ["nope"])
    assert open_manifest(faq_index).generation == before.generation + 1


# -- segments -----------------------------------------------------------------------------------------


def texts(folder) -> dict[str, str]:
    return state(folder)


def answers(searcher, questions, k=10) -> list[list[tuple[str, float]]]:
    return [[(hit.key, hit.score) for hit in hits] for hits in searcher.search_many(questions, k, min_score=float("-inf"))]


def compacted_copy(folder, target):
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("write.lock"))
    with IndexWriter.open(target) as writer:
        writer.merge(0)
    return target


def test_a_write_adds_one_small_segment_and_a_delete_only_marks(tmp_path, resolved):
    folder = tmp_path / "index"
    build_index(write_jsonl(tmp_path / "a.jsonl", entries(0, 60)), folder, resolved=resolved)
    base = open_manifest(folder)
    first = base.segments[0]
    first_bytes = (folder / first["file"]).read_bytes()
    changed = [{"id": "k5", "text": "how do I cancel my subscription"}]
    add_documents(folder, write_jsonl(tmp_path / "b.jsonl", entries(60, 63) + changed), encoder=resolved.encoder)
    after = open_manifest(folder)
    assert [r["file"] for r in after.segments] == [first["file"], f"vectors.{base.generation + 1}.faiss"]
    assert after.segments[1]["ntotal"] == 4 and after.segments[1]["kind"] == "flat"
    assert (folder / first["file"]).read_bytes() == first_bytes  # the base file is never rewritten
    assert len(after.deleted) == 1 and first["first_id"] <= after.deleted[0] <= first["last_id"]  # k5's old vector

    assert delete_documents(folder, ["k7"]) == (1, [])
    deleted = open_manifest(folder)
    assert deleted.generation == after.generation + 1 and deleted.segments == after.segments  # no file written
    assert len(deleted.deleted) == 2 and deleted.vectors == 62
    searcher = Searcher(folder, encoder=resolved.encoder)
    found = {hit.key: hit.text for hit in searcher.search(entries(5, 6)[0]["text"], k=62, min_score=float("-inf"))}
    assert len(found) == 62 and "k7" not in found and found["k5"] == "how do I cancel my subscription"
    assert searcher.search("how do I cancel my subscription", k=1)[0].key == "k5"
    assert verify_index(folder).ok


def test_a_search_over_segments_equals_one_over_the_merged_index(tmp_path, resolved):
    folder = tmp_path / "index"
    build_index(write_jsonl(tmp_path / "a.jsonl", entries(0, 40)), folder, resolved=resolved)
    for step in range(4):  # four segments with updates of earlier keys and deletions between them
        rows = entries(40 + 5 * step, 45 + 5 * step) + entries(3 * step, 3 * step + 2, version=step + 1)
        add_documents(folder, write_jsonl(tmp_path / f"s{step}.jsonl", rows), encoder=resolved.encoder)
        delete_documents(folder, [f"k{10 + step}", f"k{41 + 5 * step}"])
    manifest = open_manifest(folder)
    assert len(manifest.segments) == 5 and manifest.deleted
    questions = ["question about refund version 1", "shipping", "password version 0", "question 12 about coupon"]
    over_segments = answers(Searcher(folder, encoder=resolved.encoder), questions, k=30)
    merged = compacted_copy(folder, tmp_path / "merged")
    assert len(open_manifest(merged).segments) == 1 and open_manifest(merged).deleted == ()
    over_merged = answers(Searcher(merged, encoder=resolved.encoder), questions, k=30)
    for mine, theirs in zip(over_segments, over_merged):
        assert [key for key, _ in mine] == [key for key, _ in theirs]
        assert np.allclose([s for _, s in mine], [s for _, s in theirs], atol=1e-6)
    # and both against brute force over the live vectors
    vectors = open_vectors(folder, manifest)
    ids, stored = vectors.stored()
    query = Searcher(folder, encoder=resolved.encoder).embed(questions[:1])[0]
    scores, found = vectors.search(query[None, :], 10)
    truth = np.argsort(-(stored @ query), kind="stable")[:10]
    assert np.allclose(scores[0], (stored @ query)[truth], atol=1e-5)
    assert set(found[0]) == set(ids[truth]) or np.isclose(scores[0][-1], scores[0][-2])
    assert verify_index(folder).ok and verify_index(merged).ok


def test_a_merge_folds_the_newest_segments_and_never_resurrects_deletes(tmp_path, resolved, monkeypatch):
    monkeypatch.setattr(segments, "TIER_UNIT", 10)  # tier 0: under 80 vectors; the 100-entry base is tier 1
    folder = tmp_path / "index"
    build_index(write_jsonl(tmp_path / "a.jsonl", entries(0, 100)), folder, resolved=resolved)
    base = open_manifest(folder).segments[0]
    gone = []
    for step in range(segments.MERGE_FACTOR):
        add_documents(folder, write_jsonl(tmp_path / f"s{step}.jsonl", entries(100 + 2 * step, 102 + 2 * step)),
                      encoder=resolved.encoder)
        if step in (2, 5):  # one key of the base, one of a small segment
            gone += [f"k{step}", f"k{100 + 2 * step - 2}"]
            delete_documents(folder, gone[-2:])
        if step < segments.MERGE_FACTOR - 1:
            assert len(open_manifest(folder).segments) == step + 2
    manifest = open_manifest(folder)
    assert [r["file"] for r in manifest.segments][:1] == [base["file"]] and len(manifest.segments) == 2
    assert manifest.segments[1]["ntotal"] == 14 and manifest.segments[1]["first_id"] > base["last_id"]
    assert len(manifest.deleted) == 2 and all(i <= base["last_id"] for i in manifest.deleted)  # the merged ones dropped
    assert set(texts(folder)) == {f"k{i}" for i in range(116)} - set(gone)
    searcher = Searcher(folder, encoder=resolved.encoder)
    for key in gone:
        text = entries(int(key[1:]), int(key[1:]) + 1)[0]["text"]
        assert key not in {hit.key for hit in searcher.search(text, k=112)}
    assert np.isin(open_vectors(folder, manifest).stored()[0], manifest.deleted).sum() == 0
    assert verify_index(folder).ok and {p.name for p in folder.iterdir() if p.name.startswith("vectors.")} == \
        {r["file"] for r in manifest.segments}
    merged = compacted_copy(folder, tmp_path / "merged")  # a full merge: deletes stay deleted
    assert open_manifest(merged).deleted == () and open_manifest(merged).vectors == 112
    assert gone[0] not in {hit.key for hit in Searcher(merged, encoder=resolved.encoder).search(entries(2, 3)[0]["text"], k=112)}


def test_an_index_written_before_segments_opens_and_takes_writes(tmp_path, resolved):
    """Format 1: one vectors.<G>.faiss named by `faiss_file`, no segments. Read as one segment."""
    folder = tmp_path / "index"
    build_index(write_jsonl(tmp_path / "a.jsonl", entries(0, 30)), folder, resolved=resolved)
    manifest = open_manifest(folder)
    record = manifest.segments[0]
    db = connect(folder)
    legacy = {"format_version": 1, "segments": [], "deleted": [], "codebook": {},
              "faiss_file": {name: record[name] for name in ("bytes", "blake2b", "ntotal")}}
    for name, value in legacy.items():
        db["manifest"].upsert({"name": name, "value": json.dumps(value)}, pk="name")
    db.execute("DELETE FROM manifest WHERE name IN ('segments', 'deleted', 'codebook')")
    db.close()
    assert open_manifest(folder).format_version == 1 and record["file"] == f"vectors.{manifest.generation}.faiss"
    question = entries(4, 5)[0]["text"]
    assert Searcher(folder, encoder=resolved.encoder).search(question, k=1)[0].key == "k4"
    assert verify_index(folder).ok
    delete_documents(folder, ["k4"])
    add_documents(folder, write_jsonl(tmp_path / "b.jsonl", entries(30, 32)), encoder=resolved.encoder)
    after = open_manifest(folder)
    assert after.format_version == 2 and [r["file"] for r in after.segments][0] == record["file"]
    assert Searcher(folder, encoder=resolved.encoder).search(question, k=1)[0].key != "k4"
    assert verify_index(folder).ok and verify_index(folder).documents == 31


@pytest.mark.slow
def test_sigkill_at_each_step_of_a_segment_write_and_of_a_merge_leaves_the_pre_or_post_state(tmp_path):
    """Killed at the segment's .partial file, its rename, before and after SQLite's COMMIT (nth 1), and at
    the same steps of the merge that the write sets off (nth 2): a merge never loses the write before it."""
    prepared = tmp_path / "prepared"
    server = ForkServer()
    tiny = {"tier_unit": 10}  # tier 0: under 80 vectors, so seven 2-entry segments wait on a 100-entry base
    try:
        assert server.run({"op": "build", "folder": str(prepared), "data": str(write_jsonl(tmp_path / "b.jsonl", entries(0, 100)))}, None)
        for step in range(segments.MERGE_FACTOR - 1):
            data = write_jsonl(tmp_path / f"s{step}.jsonl", entries(100 + 2 * step, 102 + 2 * step))
            assert server.run({"op": "add", "folder": str(prepared), "data": str(data), **tiny}, None)
        assert server.run({"op": "delete", "folder": str(prepared), "keys": ["k3", "k104"], **tiny}, None)
        assert len(open_manifest(prepared).segments) == segments.MERGE_FACTOR
        committed = state(prepared)
        rows = entries(200, 202) + [{"id": "k106", "text": "a changed text about refunds"}]
        data = str(write_jsonl(tmp_path / "last.jsonl", rows))
        after = {**committed, **{row["id"]: row["text"] for row in rows}}
        first = open_manifest(prepared).generation + 1
        leftovers = files_of(open_manifest(prepared)) | {f"vectors.{g}.{end}" for g in (first, first + 1) for end in ("faiss", "partial")}
        then = str(write_jsonl(tmp_path / "then.jsonl", rows + entries(300, 301)))
        for step in ("partial", "renamed", "before-commit", "after-commit"):
            for nth in (1, 2):
                folder = tmp_path / f"{step}-{nth}"
                shutil.copytree(prepared, folder)
                request = {"op": "add", "folder": str(folder), "data": data, "die_at": step, "nth": nth, **tiny}
                assert not server.run(request, None), (step, nth)
                found = state(folder)
                assert found == (after if nth == 2 or step == "after-commit" else committed), (step, nth)
                manifest, report = open_manifest(folder), verify_index(folder)
                assert report.ok and report.documents == len(found), (step, nth, report.problems)
                merged = nth == 2 and step == "after-commit"
                assert len(manifest.segments) == (2 if merged else segments.MERGE_FACTOR + (found == after)), (step, nth)
                # left over: files of the generation before (killed after COMMIT), or of the killed write or merge
                assert unnamed_files(folder) <= leftovers, (step, nth, unnamed_files(folder))
                searcher = Searcher(folder)
                assert "k3" not in {hit.key for hit in searcher.search(entries(3, 4)[0]["text"], k=20)}
                assert "k104" not in {hit.key for hit in searcher.search(entries(104, 105)[0]["text"], k=20)}
                # the next write (the killed one's entries and one more) commits and merges; nothing is left over
                assert server.run({"op": "add", "folder": str(folder), "data": then, **tiny}, None)
                assert state(folder) == {**after, "k300": entries(300, 301)[0]["text"]}
                assert unnamed_files(folder) == set() and verify_index(folder).ok
                assert len(open_manifest(folder).segments) in (2, 3), (step, nth)
    finally:
        server.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "sq8", "ivfpq"])
def test_segments_of_each_type_with_deletions_answer_as_exact_search(kind):
    """Three segments (the first of `kind`, two flat), a quarter of the ids deleted across them: the top 10
    are numpy's top 10 over the live vectors, with their scores."""
    from scale_helpers import clustered

    from indexer.store import ann

    points = clustered(3_050, dimension=32)
    vectors, queries = points[:3_000], points[3_000:]
    ids = np.arange(1, 3_001, dtype=np.int64)
    deleted = ids[::4]
    parts = []
    for start, stop, part_kind in ((0, 2_400, kind), (2_400, 2_900, "flat"), (2_900, 3_000, "flat")):
        index = ann.new_index(part_kind, 32, {})
        index.add_with_ids(vectors[start:stop], ids[start:stop])
        index, _, _ = ann.finish(index, part_kind, {}, np.zeros(0, np.int64))
        parts.append(segments.Segment(f"part-{start}", index, deleted[(deleted > start) & (deleted <= stop)]))
    assert ann.kind(parts[0].index) == kind
    merged = segments.SegmentSet(parts, 32)
    assert merged.ntotal == 3_000 - len(deleted)
    live = ~np.isin(ids, deleted)
    scores, found = ann.search(merged, queries, 10)
    assert not np.isin(found, deleted).any() and (found > 0).all()
    assert np.allclose(scores, np.einsum("qkd,qd->qk", vectors[found - 1], queries), atol=1e-5)  # exact scores
    assert (np.diff(scores, axis=1) <= 0).all()
    truth = [set(ids[live][np.argsort(-(vectors[live] @ query), kind="stable")[:10]]) for query in queries]
    recall = np.mean([len(truth[i] & set(found[i])) / 10 for i in range(len(queries))])
    assert recall == 1.0 if kind == "flat" else recall >= 0.97


def test_repair_embeds_again_only_the_entries_of_a_damaged_segment(tmp_path, resolved):
    from indexer.store.repair import repair_index

    folder = tmp_path / "index"
    build_index(write_jsonl(tmp_path / "a.jsonl", entries(0, 40)), folder, resolved=resolved)
    add_documents(folder, write_jsonl(tmp_path / "b.jsonl", entries(40, 45)), encoder=resolved.encoder)
    add_documents(folder, write_jsonl(tmp_path / "c.jsonl", entries(45, 48)), encoder=resolved.encoder)
    delete_documents(folder, ["k41"])
    records = open_manifest(folder).segments
    kept = {r["file"]: (folder / r["file"]).read_bytes() for r in (records[0], records[2])}
    path = folder / records[1]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # vector bytes: size and header hold
    path.write_bytes(bytes(data))
    report = verify_index(folder)
    assert not report.ok and records[1]["file"] in report.problems[0] and "checksum" in report.problems[0]

    repaired = repair_index(folder, encoder=resolved.encoder)
    assert repaired.segments == [records[1]["file"]] and repaired.reembedded == 4  # k40, k42..k44
    after = open_manifest(folder)
    assert records[1]["file"] not in {r["file"] for r in after.segments} and not path.exists()
    assert all((folder / name).read_bytes() == content for name, content in kept.items())  # the others untouched
    assert verify_index(folder, text_sample=47, encoder=resolved.encoder).ok
    assert Searcher(folder, encoder=resolved.encoder).search(entries(43, 44)[0]["text"], k=1)[0].key == "k43"


def test_compact_merges_everything_into_one_segment_once(faq_index):
    assert delete_documents(faq_index, ["en-001", "en-002"]) == (2, [])
    before = open_manifest(faq_index)
    assert len(before.deleted) == 2
    result = run_cli("compact", faq_index, check=True)
    assert result.stdout.strip() == (f"{faq_index}: 1 segment and 2 deleted vectors merged into one flat segment; "
                                     f"48 vectors, generation {before.generation + 1}")
    after = open_manifest(faq_index)
    assert len(after.segments) == 1 and after.deleted == () and after.segments[0]["ntotal"] == 48
    assert {p.name for p in faq_index.iterdir() if p.name.startswith("vectors.")} == {after.segments[0]["file"]}
    assert run_cli("compact", faq_index, check=True).stdout.strip() == f"{faq_index}: one segment, nothing deleted: nothing to compact"
    assert open_manifest(faq_index) == after and verify_index(faq_index).ok

"""Correctness of the speed work: ANN index types against exact search, deletes and updates on each
type, `auto` switching as a collection grows and shrinks, and the encoder's fast paths against fp32.
No timing here: speed is measured by bench/throughput.py and bench/latency.py."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from conftest import EXAMPLES
from indexer import BertdexError, build_index, delete_documents
from indexer.store import ann
from indexer.ingest.build import add_documents
from indexer.store.folder import connect, load_vectors, read_manifest
from indexer.store.verify import verify_index
from search import Searcher
from scale_helpers import clustered, numpy_top  # tests/ is on the path, as for conftest


def built(index_type: str, vectors: np.ndarray, ids: np.ndarray, params: dict | None = None):
    index = ann.new_index(index_type, vectors.shape[1], params or {})
    index.add_with_ids(vectors, ids)
    return ann.finish(index, index_type, params or {}, np.zeros(0, dtype=np.int64))


def manifest_of(folder):
    return read_manifest(connect(folder, readonly=True), folder)


# -- ANN against exact search -------------------------------------------------------------------


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_ann_recall_at_10_against_numpy_exact_search(index_type):
    points = clustered(4300)
    vectors, queries = points[:4000], points[4000:]  # the questions are fresh points, not stored vectors
    ids = np.arange(4000, dtype=np.int64) * 3 + 7
    index, kind, params = built(index_type, vectors, ids)
    assert kind == index_type == ann.kind(index)
    assert params["recall_at_10"] >= ann.RECALL_TARGET and params["recall_sample"] == ann.RECALL_SAMPLE
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(found[i]) & set(numpy_top(vectors, ids, q, 10))) / 10 for i, q in enumerate(queries)])
    assert recall >= 0.97
    depth = params["ef_search"] if index_type == "hnsw" else params["nprobe"]
    assert depth >= 1 and (index_type == "hnsw" or depth <= params["nlist"] < 4000)


def test_ivf_never_searches_all_its_lists_it_becomes_flat_and_says_so():
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((3000, 384)).astype(np.float32)  # no structure: every list is as near as any other
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64)
    index, kind, params = built("ivf", noise, ids)
    assert (kind, ann.kind(index), params["requested"]) == ("flat", "flat", "ivf") and "only all lists" in params["note"]
    assert np.array_equal(np.sort(ann.stored(index)[0]), ids)
    index, kind, params = built("ivf", clustered(3000), ids)  # clustered: a few lists hold the answers
    assert kind == "ivf" and params["nprobe"] < params["nlist"] and params["recall_at_10"] >= ann.TUNE_TARGET
    assert params["recall_sample"] == ann.RECALL_SAMPLE and params["sample_nprobe"] <= params["nprobe"]


def test_flat_is_exact_and_records_no_search_depth():
    vectors, ids = clustered(500), np.arange(500, dtype=np.int64)
    index, kind, params = built("flat", vectors, ids)
    assert (kind, params) == ("flat", {"requested": "flat"})
    query = clustered(1, seed=3)[0]
    _, found = index.search(query[None, :], 10)
    assert found[0].tolist() == numpy_top(vectors, ids, query, 10)


def test_recall_at_counts_shared_ids():
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(2))
    index.add_with_ids(np.asarray([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32), np.asarray([1, 7, 2]))
    assert ann.recall_at(index, np.asarray([[1, 0]], dtype=np.float32), [{1, 2}], 2) == 0.5


def test_recall_at_counts_a_tie_with_the_kth_exact_score_as_right():
    vectors = np.asarray([[1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]], dtype=np.float32)  # ids 5 and 6: one text twice
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(2))
    index.add_with_ids(vectors, np.asarray([4, 5, 6, 7]))
    query = np.asarray([[1, 0]], dtype=np.float32)
    truth, kth = ann.exact_neighbours(vectors, query, np.asarray([4, 5, 6, 7]), 2)
    assert 4 in truth[0] and len(truth[0] & {5, 6}) == 1 and np.isclose(kth[0], 0.6)
    # exact search kept a duplicate (id 99) the index does not return: the index's 5 or 6 ties with it
    assert ann.recall_at(index, query, [{4, 99}], 2) == 0.5
    assert ann.recall_at(index, query, [{4, 99}], 2, kth=np.asarray([0.6], dtype=np.float32)) == 1.0
    assert ann.recall_at(index, query, [{4, 99}], 2, kth=np.asarray([0.7], dtype=np.float32)) == 0.5


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_delete_rebuilds_without_the_removed_ids_and_keeps_recall(index_type):
    vectors, ids = clustered(3000), np.arange(1, 3001, dtype=np.int64)
    index, kind, params = built(index_type, vectors, ids)
    removed = ids[::3]
    index, kind, params = ann.finish(index, kind, params, removed)
    left, left_vectors = ann.stored(index)
    assert index.ntotal == 2000 and not np.isin(removed, left).any()
    order = np.argsort(left)
    assert np.array_equal(left[order], ids[~np.isin(ids, removed)])
    assert np.allclose(left_vectors[order], vectors[~np.isin(ids, removed)])
    assert params["recall_at_10"] >= ann.RECALL_TARGET
    _, found = index.search(vectors[removed - 1][:50], 5)
    assert not np.isin(found, removed).any()


def test_a_small_hnsw_delete_leaves_tombstones_that_searches_skip_and_a_large_one_rebuilds(tmp_path):
    vectors, ids = clustered(3000), np.arange(1, 3001, dtype=np.int64)
    index, kind, params = built("hnsw", vectors, ids)
    few = ids[:150]  # 5%: below REBUILD_SHARE
    index, kind, params = ann.finish(index, kind, params, few)
    assert index.ntotal == 3000 and ann.tombstones(index) == 150 == params["tombstones"]
    assert ann.live_count(index) == 2850 and not np.isin(few, ann.stored(index)[0]).any()
    _, found = ann.search(index, vectors[few - 1][:50], 10)
    assert (found >= 0).all() and not np.isin(found, few).any()  # k live answers, none deleted
    faiss.write_index(index, str(tmp_path / "kept.faiss"))
    index = faiss.read_index(str(tmp_path / "kept.faiss"))
    assert ann.tombstones(index) == 150
    _, again = ann.search(index, vectors[few - 1][:50], 10)
    assert (again >= 0).all() and not np.isin(again, few).any()
    more = ids[150:400]  # 150 + 250 = 13% of the graph: rebuilt without any of them
    index, kind, params = ann.finish(index, kind, params, more)
    assert index.ntotal == 2600 and ann.tombstones(index) == 0 and "tombstones" not in params
    assert params["recall_at_10"] >= ann.RECALL_TARGET
    _, found = ann.search(index, vectors[:400][::8], 10)
    assert not np.isin(found, ids[:400]).any()


def test_auto_switches_to_hnsw_when_the_collection_grows_and_back_when_it_shrinks():
    assert ann.choose("auto", ann.AUTO_FLAT_MAX, "flat") == "flat"
    assert ann.choose("auto", ann.AUTO_FLAT_MAX + 1, "flat") == "hnsw"
    assert ann.choose("auto", ann.AUTO_FLAT_MAX // 2 + 1, "hnsw") == "hnsw"  # no flipping near the line
    assert ann.choose("ivf", 10, "flat") == "ivf"
    count = ann.AUTO_FLAT_MAX + 500
    vectors, ids = clustered(count, dimension=32), np.arange(count, dtype=np.int64)
    index, kind, params = built("auto", vectors, ids)
    # auto keeps HNSW only where it answers faster than exact search, as measured here (32 dimensions: rarely)
    assert params["requested"] == "auto" and ann.kind(index) == kind
    assert (kind == "hnsw" and params["recall_at_10"] >= ann.RECALL_TARGET) or \
        (kind == "flat" and "exact search" in params["note"] and index.ntotal == count)
    if kind == "flat":
        index, kind, params = ann.new_index("hnsw", 32, {}), "hnsw", {"requested": "auto"}
        index.add_with_ids(vectors, ids)
    index, kind, params = ann.finish(index, kind, params, ids[: count - ann.AUTO_FLAT_MAX // 2 + 1])
    assert (kind, params, index.ntotal) == ("flat", {"requested": "auto"}, ann.AUTO_FLAT_MAX // 2 - 1)
    assert np.array_equal(np.sort(ann.stored(index)[0]), ids[count - ann.AUTO_FLAT_MAX // 2 + 1:])


def test_unknown_index_type_is_refused_with_the_choices():
    with pytest.raises(BertdexError, match="auto, flat, hnsw, ivf"):
        ann.new_index("annoy", 8, {})


# -- the real pipeline on each type -------------------------------------------------------------


@pytest.fixture(scope="module")
def typed_indexes(resolved, tmp_path_factory):
    """The English FAQ built once per index type (same recipe, so no second model load)."""
    folders = {}
    for index_type in ("flat", "hnsw", "ivf"):
        folder = tmp_path_factory.mktemp(index_type) / "index"
        build_index(EXAMPLES / "faq_en.csv", folder, text_fields=["question"], group_field="group",
                    resolved=resolved, index_type=index_type)
        folders[index_type] = folder
    return folders


def test_each_type_is_recorded_in_the_manifest_and_verifies(typed_indexes):
    for index_type, folder in typed_indexes.items():
        manifest = manifest_of(folder)
        assert manifest.index_type == index_type and manifest.index_params["requested"] == index_type
        index = load_vectors(folder, manifest.generation, manifest.recipe.dimension)
        assert ann.kind(index) == index_type and index.ntotal == manifest.vectors > 40
        assert verify_index(folder).ok
    assert {"M", "ef_search", "recall_at_10"} <= set(manifest_of(typed_indexes["hnsw"]).index_params)
    assert {"nlist", "nprobe", "recall_at_10"} <= set(manifest_of(typed_indexes["ivf"]).index_params)


def test_ann_types_answer_like_exact_search(typed_indexes, encoder):
    questions = [line.strip() for line in (EXAMPLES / "questions_en.txt").read_text().splitlines() if line.strip()]
    answers = {}
    for index_type, folder in typed_indexes.items():
        searcher = Searcher(folder, encoder=encoder)
        answers[index_type] = [[(h.key, round(h.score, 4)) for h in hits]
                               for hits in searcher.search_many(questions, k=3, mode="dense")]
    assert answers["hnsw"] == answers["flat"] and answers["ivf"] == answers["flat"]


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_delete_and_update_work_on_ann_indexes(typed_indexes, encoder, tmp_path, index_type):
    import shutil

    folder = tmp_path / "index"
    shutil.copytree(typed_indexes[index_type], folder, ignore=shutil.ignore_patterns("write.lock"))
    before = manifest_of(folder)
    searcher = Searcher(folder, encoder=encoder)
    first = searcher.search("how do I reset my password", k=1, mode="dense")[0]
    removed, missing = delete_documents(folder, [first.key, "no-such-key"])
    assert (removed, missing) == (1, ["no-such-key"])
    after = manifest_of(folder)
    assert (after.index_type, after.vectors, after.documents) == (index_type, before.vectors - 1, before.documents - 1)
    # segments: the delete only marks the entry's id; no FAISS file is rewritten, whatever the type
    assert len(after.deleted) == len(before.deleted) + 1 and after.segments == before.segments
    assert all(hit.key != first.key for hit in searcher.search("how do I reset my password", k=5, mode="dense"))
    changed = tmp_path / "changed.csv"
    changed.write_text("id,group,question,answer,category\n"
                       f"{first.key},g-new,where is the moon base parking,Level 3,misc\n", encoding="utf-8")
    report = add_documents(folder, changed, encoder=encoder)
    assert (report.added, report.updated) == (1, 0)
    top = searcher.search("parking at the moon base", k=1, mode="dense")[0]
    assert top.key == first.key and top.score > 0.8
    assert verify_index(folder).ok and manifest_of(folder).index_type == index_type


def test_cli_index_type_option_builds_hnsw_and_refuses_unknown(tmp_path):
    from conftest import run_cli

    result = run_cli("index", tmp_path / "h", EXAMPLES / "faq_en.csv", "--text-field", "question",
                     "--index-type", "hnsw", "--quiet", "--json", check=True)
    assert json.loads(result.stdout)["documents"] > 40
    info = json.loads(run_cli("info", tmp_path / "h", "--json", check=True).stdout)
    assert info["index_type"] == "hnsw" and info["index_params"]["recall_at_10"] >= ann.RECALL_TARGET
    refused = run_cli("index", tmp_path / "x", EXAMPLES / "faq_en.csv", "--index-type", "annoy")
    assert refused.returncode == 2 and "'annoy' is not one of 'auto', 'flat', 'hnsw', 'ivf'" in refused.stderr
    assert not (tmp_path / "x" / "bertdex.db").exists()


# -- the encoder's paths ------------------------------------------------------------------------

SENTENCES = ["How do I reset my password?", "Where is my parcel?", "비밀번호가 생각이 안 나요",
             "Can I change the delivery address after the order has shipped to the warehouse?", "ok"]


@pytest.fixture(scope="module")
def fp32_encoder(resolved):
    """fp32 pinned (ONNX Runtime or PyTorch, whichever measured faster): exact-vector tests must not depend
    on whether this CPU's measured choice is bf16."""
    from indexer.embed.encoder import Encoder

    recipe = resolved.recipe
    return Encoder(resolved.encoder.folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision="fp32")


def test_one_question_gets_the_vector_it_gets_in_a_batch_and_threads_are_restored(fp32_encoder, resolved):
    import torch

    recipe = resolved.recipe
    threads = torch.get_num_threads()
    together = fp32_encoder.embed(SENTENCES, layer=recipe.layer, pooling=recipe.pooling).vectors
    alone = np.vstack([fp32_encoder.embed([s], layer=recipe.layer, pooling=recipe.pooling).vectors for s in SENTENCES])
    assert np.min(np.sum(together * alone, axis=1)) >= 0.99999
    assert torch.get_num_threads() == threads


def test_the_default_encoder_agrees_with_fp32_within_the_measured_tolerance(encoder, fp32_encoder, resolved):
    from indexer.embed.measure import MIN_COSINE

    recipe = resolved.recipe
    default = encoder.embed(SENTENCES, layer=recipe.layer, pooling=recipe.pooling).vectors
    exact = fp32_encoder.embed(SENTENCES, layer=recipe.layer, pooling=recipe.pooling).vectors
    assert np.min(np.sum(default * exact, axis=1)) >= MIN_COSINE


def test_batch_budget_does_not_change_vectors(fp32_encoder, resolved):
    recipe = resolved.recipe
    before = fp32_encoder.embed(SENTENCES * 3, layer=recipe.layer, pooling=recipe.pooling).vectors
    saved = fp32_encoder.batch_tokens, fp32_encoder.max_batch
    try:
        fp32_encoder.batch_tokens, fp32_encoder.max_batch = 40, 2
        after = fp32_encoder.embed(SENTENCES * 3, layer=recipe.layer, pooling=recipe.pooling).vectors
    finally:
        fp32_encoder.batch_tokens, fp32_encoder.max_batch = saved
    assert np.min(np.sum(before * after, axis=1)) >= 0.99999


def test_embed_layers_gives_each_layer_and_pooling_what_embed_gives(resolved):
    from indexer.embed.encoder import Encoder

    everything = Encoder(resolved.encoder.folder, max_length=resolved.recipe.max_length, keep_layers=None)
    texts = SENTENCES + [LONG]
    vectors, owners, _ = everything.embed_layers(texts, layers=[3, 6], windows=True, window_length=64)
    for (layer, pooling), got in vectors.items():
        alone = everything.embed(texts, layer=layer, pooling=pooling, windows=True, window_length=64)
        assert alone.owners.tolist() == owners.tolist()
        assert np.min(np.sum(alone.vectors * got, axis=1)) >= 0.99999, (layer, pooling)
    assert set(vectors) == {(layer, p) for layer in (3, 6) for p in ("mean", "max", "cls", "mean-max")}


@pytest.mark.slow
def test_bf16_stays_close_to_fp32_and_unknown_precision_lists_choices(fp32_encoder, resolved):
    from indexer.embed.encoder import Encoder

    recipe = resolved.recipe
    bf16 = Encoder(fp32_encoder.folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision="bf16")
    assert bf16.precision == "bf16" and fp32_encoder.precision == "fp32"
    reference = fp32_encoder.embed(SENTENCES, layer=recipe.layer, pooling=recipe.pooling).vectors
    vectors = bf16.embed(SENTENCES, layer=recipe.layer, pooling=recipe.pooling).vectors
    assert np.min(np.sum(reference * vectors, axis=1)) >= 0.999
    with pytest.raises(BertdexError, match="auto, fp32, bf16"):
        Encoder(fp32_encoder.folder, precision="int8")


# -- ONNX Runtime, the usual fp32 path -----------------------------------------------------------

LONG = "A customer asks how to return a parcel that arrived damaged, and whether the shipping is refunded. " * 25


@pytest.fixture(scope="module")
def torch_encoder(resolved):
    from indexer.embed.encoder import Encoder

    recipe = resolved.recipe
    return Encoder(resolved.encoder.folder, max_length=recipe.max_length, keep_layers=recipe.layer, backend="torch",
                   precision="fp32")


def test_onnx_runtime_matches_pytorch_fp32(torch_encoder, resolved):
    from indexer.embed.encoder import Encoder

    recipe = resolved.recipe
    onnx = Encoder(resolved.encoder.folder, max_length=recipe.max_length, keep_layers=recipe.layer, backend="onnx")
    assert onnx.backend == "onnx" and torch_encoder.backend == "torch" and torch_encoder.precision == "fp32"
    texts = SENTENCES + [LONG, "환불은 언제 되나요? 배송비도 돌려주나요?"]
    fast = onnx.embed(texts, layer=recipe.layer, pooling=recipe.pooling, windows=True, window_length=64)
    slow = torch_encoder.embed(texts, layer=recipe.layer, pooling=recipe.pooling, windows=True, window_length=64)
    assert fast.owners.tolist() == slow.owners.tolist() and len(fast.owners) > len(texts)
    assert np.min(np.sum(fast.vectors * slow.vectors, axis=1)) >= 0.99999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_matches_pytorch_fp32_in_bulk_and_for_one_question(torch_encoder, resolved, precision):
    from indexer.embed import openvino_model
    from indexer.embed.encoder import Encoder

    recipe = resolved.recipe
    options = dict(max_length=recipe.max_length, keep_layers=recipe.layer, backend="openvino", precision=precision)
    if precision == "bf16" and not openvino_model.bf16_offered():  # this CPU: OpenVINO says it has no bf16
        with pytest.raises(BertdexError, match="--backend openvino is not available"):
            Encoder(resolved.encoder.folder, **options)
        return
    texts = SENTENCES + [LONG, "환불은 언제 되나요? 배송비도 돌려주나요?"]
    slow = torch_encoder.embed(texts, layer=recipe.layer, pooling=recipe.pooling).vectors
    for purpose in ("bulk", "question"):
        ours = Encoder(resolved.encoder.folder, **options, purpose=purpose)
        assert ours.path.label() == f"openvino {precision} (cpu)" and ours.model is None  # no PyTorch weights
        together = ours.embed(texts, layer=recipe.layer, pooling=recipe.pooling).vectors
        alone = np.vstack([ours.embed([text], layer=recipe.layer, pooling=recipe.pooling).vectors for text in texts])
        floor = 0.99999 if precision == "fp32" else 0.999  # bf16: measure.MIN_COSINE, what `auto` accepts
        assert np.min(np.sum(together * slow, axis=1)) >= floor and np.min(np.sum(alone * slow, axis=1)) >= floor
        assert np.min(np.sum(together * alone, axis=1)) >= floor  # a batch pads; one question does not
    ours.warm_up(longest=64)  # every width to 64 tokens, as a server prepares them: the answers stay
    again = np.vstack([ours.embed([text], layer=recipe.layer, pooling=recipe.pooling).vectors for text in texts])
    assert np.min(np.sum(again * alone, axis=1)) >= 0.99999


@pytest.mark.slow
def test_an_export_is_cached_reused_without_pytorch_and_rebuilt_when_damaged(resolved, torch_encoder, tmp_path):
    from indexer.embed import onnx_model
    from indexer.embed.encoder import Encoder

    folder, layer = resolved.encoder.folder, 3  # a layer no other test exports: this one pays the export
    first = Encoder(folder, keep_layers=layer, cache=tmp_path, backend="onnx")
    (cached,) = tmp_path.glob("*.onnx")
    assert first.backend == "onnx" and f"-L{layer}-" in cached.name
    reference = Encoder(folder, keep_layers=layer, backend="torch", precision="fp32").embed(
        SENTENCES, layer=layer, pooling="mean").vectors

    second = Encoder(folder, keep_layers=layer, cache=tmp_path, backend="onnx")
    assert second.backend == "onnx" and second.model is None  # the cached export alone: no PyTorch weights loaded
    assert np.min(np.sum(second.embed(SENTENCES, layer=layer, pooling="mean").vectors * reference, axis=1)) >= 0.99999

    (weights,) = tmp_path.glob("*.data")  # the graph's weights beside it (onnx_model.write_export)
    assert onnx_model.export_files(cached) == [weights, cached] and weights.stat().st_size > 1_000_000
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:1000])  # a crash mid-copy, a full disk
    third = Encoder(folder, keep_layers=layer, cache=tmp_path, backend="onnx")
    assert third.backend == "onnx" and weights.stat().st_size == size
    assert np.min(np.sum(third.embed(SENTENCES, layer=layer, pooling="mean").vectors * reference, axis=1)) >= 0.99999


def test_backend_choices_and_their_refusals(resolved):
    from indexer.embed.encoder import Encoder

    folder, recipe = resolved.encoder.folder, resolved.recipe
    with pytest.raises(BertdexError, match="auto, onnx, openvino, torch"):
        Encoder(folder, backend="tensorflow")
    with pytest.raises(BertdexError, match="--backend onnx is not available.*bf16"):
        Encoder(folder, keep_layers=recipe.layer, precision="bf16", backend="onnx")
    everything = Encoder(folder, keep_layers=None)
    assert everything.backend == "torch" and "all hidden states" in everything.backend_reason


@pytest.mark.slow
def test_an_unwritable_cache_falls_back_to_the_temporary_folder(resolved, tmp_path):
    from indexer.embed import onnx_model
    from indexer.embed.encoder import Encoder

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    encoder = Encoder(resolved.encoder.folder, keep_layers=2, cache=blocked / "onnx", backend="onnx")
    assert encoder.backend == "onnx" and encoder.runner.session.path.parent == onnx_model.FALLBACK_CACHE
    again = Encoder(resolved.encoder.folder, keep_layers=2, cache=blocked / "onnx", backend="onnx")
    assert again.runner.session.path == encoder.runner.session.path and again.model is None

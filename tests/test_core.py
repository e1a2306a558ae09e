"""The core engine on the real bundled model: vectors, recipe, index, search, reopening."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from conftest import EXAMPLES
from indexer import BertdexError, build_index
from indexer.embed.encoder import Encoder
from indexer.embed.models import DEFAULT_MODEL, resolve_model_folder
from indexer.embed.pooling import pool_max, pool_mean
from indexer.store.folder import connect, load_vectors, read_manifest
from search import Searcher


def stored_vectors(folder):
    """(passage ids, vectors) as FAISS holds them, and document key per passage id."""
    db = connect(folder, readonly=True)
    manifest = read_manifest(db, folder)
    index = load_vectors(folder, manifest.generation, manifest.recipe.dimension)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = np.vstack([index.reconstruct(int(i)) for i in ids])
    keys = dict(db.execute("SELECT p.id, d.key FROM passages p JOIN documents d ON d.id = p.document_id").fetchall())
    return ids, vectors, keys


def test_bundled_model_matches_sentence_transformers_recipe(resolved):
    recipe = resolved.recipe
    assert (recipe.layer, recipe.pooling, recipe.max_length, recipe.dimension) == (6, "mean", 256, 384)
    assert recipe.lowercase is True
    assert "sentence-transformers" in resolved.reason


def test_scores_equal_brute_force_cosine_over_stored_vectors(faq_index_master, encoder):
    ids, vectors, keys = stored_vectors(faq_index_master)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    searcher = Searcher(faq_index_master, encoder=encoder)
    question = "my parcel never arrived"
    query = searcher.embed([question])[0]
    brute = vectors @ query
    order = np.argsort(-brute)
    hits = searcher.search(question, k=5, mode="dense")
    hits_by_key = {hit.key: hit.score for hit in hits}
    assert hits[0].key == keys[int(ids[order[0]])]
    for key, score in hits_by_key.items():
        passage = next(int(i) for i in ids if keys[int(i)] == key)
        assert score == pytest.approx(float(brute[list(ids).index(passage)]), abs=1e-5)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_faiss_top_k_equals_numpy_argsort(faq_index_master):
    ids, vectors, _ = stored_vectors(faq_index_master)
    db = connect(faq_index_master, readonly=True)
    manifest = read_manifest(db, faq_index_master)
    index = load_vectors(faq_index_master, manifest.generation, manifest.recipe.dimension)
    rng = np.random.default_rng(7)
    for _ in range(5):
        q = rng.standard_normal(vectors.shape[1]).astype(np.float32)
        q /= np.linalg.norm(q)
        _, found = index.search(q[None, :], 7)
        assert list(found[0]) == list(ids[np.argsort(-(vectors @ q), kind="stable")[:7]])


def test_question_identical_to_an_entry_is_first_with_score_one(faq_index_master, encoder):
    searcher = Searcher(faq_index_master, encoder=encoder)
    hits = searcher.search("When will I get my money back?", k=3, mode="dense")
    assert hits[0].key == "en-022" and hits[0].text == "When will I get my money back?"
    assert hits[0].score >= 0.999
    assert "business days" in hits[0].fields["answer"]


def test_same_text_same_vector_whatever_the_batch(encoder, resolved):
    recipe = resolved.recipe
    text = "How long does a refund take to reach my card?"
    alone = encoder.embed([text], layer=recipe.layer, pooling=recipe.pooling).vectors[0]
    neighbours = ["ok", "word " * 200, "A medium sentence about shipping to Jeju island.", text, "배송 " * 50]
    batch = encoder.embed(neighbours, layer=recipe.layer, pooling=recipe.pooling).vectors[3]
    many = encoder.embed([text] * 3 + neighbours * 20, layer=recipe.layer, pooling=recipe.pooling).vectors[1]
    assert float(alone @ batch) >= 0.99999
    assert float(alone @ many) >= 0.99999


def test_layer_and_pooling_change_the_vector():
    encoder = Encoder(resolve_model_folder(DEFAULT_MODEL), keep_layers=None)
    text = ["Where is my order?"]
    last_mean = encoder.embed(text, layer=6, pooling="mean").vectors[0]
    second_mean = encoder.embed(text, layer=5, pooling="mean").vectors[0]
    last_cls = encoder.embed(text, layer=6, pooling="cls").vectors[0]
    last_max = encoder.embed(text, layer=6, pooling="max").vectors[0]
    no_special = encoder.embed(text, layer=6, pooling="mean", exclude_special=True).vectors[0]
    mean_max = encoder.embed(text, layer=6, pooling="mean-max").vectors[0]
    for other in (second_mean, last_cls, last_max, no_special):
        assert float(last_mean @ other) < 0.999
    assert mean_max.shape == (768,)
    # a truncated encoder (layers above the pooled one removed) gives the same vector
    truncated = Encoder(resolve_model_folder(DEFAULT_MODEL), keep_layers=5)
    assert float(truncated.embed(text, layer=5, pooling="mean").vectors[0] @ second_mean) >= 0.99999


def test_pooling_masks_padding():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]], dtype=np.float32)
    assert pool_mean(hidden, mask).tolist() == [[2.0, 3.0]]
    assert pool_max(hidden, mask).tolist() == [[3.0, 4.0]]
    assert pool_mean(hidden, np.zeros_like(mask)).tolist() == [[0.0, 0.0]]


def test_reopened_index_gives_identical_results(faq_index_master, encoder):
    questions = ["refund to my card", "change delivery address", "delete my account"]
    first = Searcher(faq_index_master, encoder=encoder).search_many(questions, k=5)
    again = Searcher(faq_index_master, encoder=encoder).search_many(questions, k=5)
    assert [[(h.key, h.score) for h in hits] for hits in first] == [[(h.key, h.score) for h in hits] for hits in again]


def test_groups_return_one_row_per_answer_with_variants(faq_index_master, encoder):
    hits = Searcher(faq_index_master, encoder=encoder).search("forgot password reset", k=5)
    groups = [hit.group for hit in hits]
    assert len(groups) == len(set(groups))
    assert hits[0].group == "g-password-reset"
    assert len(hits[0].variants) == 3


def test_several_text_fields_are_joined(tmp_path, resolved):
    folder = tmp_path / "qa"
    build_index(EXAMPLES / "faq_en.csv", folder, text_fields=["question", "answer"])
    searcher = Searcher(folder, encoder=resolved.encoder)
    hit = searcher.search("PayPal", k=1, mode="keyword")[0]
    assert hit.text.startswith("What payment methods do you accept? We accept Visa")
    # each joined field stays its own stored field, as written (issue 14: the answer was lost)
    assert hit.fields["answer"].startswith("We accept Visa") and hit.fields["category"] == "billing"
    assert hit.fields["question"] == "What payment methods do you accept?"


@pytest.mark.parametrize("name,content", [
    ("faq.tsv", "id\tquestion\tanswer\n1\tWhere is my parcel?\tTrack it.\n2\tHow do I pay?\tBy card.\n"),
    ("faq.jsonl", '{"id": "1", "question": "Where is my parcel?", "answer": "Track it."}\n'
                  '{"id": "2", "question": "How do I pay?", "answer": "By card."}\n'),
    ("faq.txt", "Where is my parcel?\nHow do I pay?\n"),
])
def test_reads_tsv_jsonl_and_plain_text(tmp_path, name, content):
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    text_fields = [] if name.endswith(".txt") else ["question"]
    report = build_index(data, tmp_path / "index", text_fields=text_fields)
    assert (report.added, report.documents, report.vectors) == (2, 2, 2)
    hit = Searcher(tmp_path / "index").search("parcel tracking", k=1)[0]
    assert hit.key == "1" and hit.text == "Where is my parcel?"


def test_truncation_is_counted_and_windows_split(tmp_path):
    data = tmp_path / "long.jsonl"
    rows = [{"id": "long", "text": "refund policy details " * 200}, {"id": "short", "text": "hello"}]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cut = build_index(data, tmp_path / "cut", window=False)
    assert (cut.truncated, cut.vectors) == (1, 2)
    split = build_index(data, tmp_path / "split", window=True, max_length=64, stride=8)
    assert split.truncated == 0 and split.vectors > 10 and split.documents == 2


# -- refusals -----------------------------------------------------------------------------------------


def test_refuses_a_folder_that_is_not_an_index(tmp_path):
    with pytest.raises(BertdexError, match="not a bertdex index"):
        Searcher(tmp_path)


def test_refuses_a_recipe_that_differs(faq_index_master, encoder):
    with pytest.raises(BertdexError, match="--layer 3 differs"):
        Searcher(faq_index_master, encoder=encoder, layer=3)
    with pytest.raises(BertdexError, match="--pooling cls differs"):
        Searcher(faq_index_master, encoder=encoder, pooling="cls")


def test_refuses_a_model_whose_checksum_differs(faq_index_master, tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "other-model"
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    with pytest.raises(BertdexError, match="is not the model this index was built with"):
        Searcher(faq_index_master, model=str(folder))


def test_refuses_empty_input(tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("id,question\n", encoding="utf-8")
    with pytest.raises(BertdexError, match="no entries"):
        build_index(data, tmp_path / "index")


def test_refuses_a_row_without_the_text_field_naming_file_and_line(tmp_path):
    data = tmp_path / "faq.jsonl"
    data.write_text('{"id": 1, "question": "ok"}\n{"id": 2, "question": "fine"}\n{"id": 3, "title": "x"}\n')
    with pytest.raises(BertdexError, match=r"faq.jsonl:3: no 'question' field"):
        build_index(data, tmp_path / "index", text_fields=["question"])
    assert not (tmp_path / "index").exists()


def test_refuses_invalid_utf8_naming_the_line(tmp_path):
    data = tmp_path / "faq.csv"
    data.write_bytes(b"id,question\n1,caf\xc3\xa9\n2,na\xefve\n")
    with pytest.raises(BertdexError, match=r"faq.csv:3: not valid UTF-8"):
        build_index(data, tmp_path / "index")


def test_unknown_hub_model_fails_with_one_clear_line(tmp_path):
    with pytest.raises(BertdexError, match="could not be fetched from the Hugging Face hub"):
        resolve_model_folder("no-such-org/no-such-model-bertdex")


def test_the_default_model_follows_the_collections_language(monkeypatch):
    import indexer.embed.models as models

    monkeypatch.setattr(models, "DEFAULT_MODEL", models.AUTO)  # the suite pins the English model; undo here
    assert models.model_choice(["Where is my parcel?", "How do I reset my password?"])[0] == models.MINILM
    korean, reason = models.model_choice(["비밀번호를 잊어버렸어요", "배송은 얼마나 걸리나요?", "Where is my parcel?"])
    assert korean == models.E5 and reason.startswith("auto: 67% of the entries")
    assert models.model_choice(["¿Dónde está mi paquete?"] * 3 + ["ok"] * 9)[0] == models.E5  # 25% accented
    assert models.model_choice(["Café opening hours?"] + ["Where is my parcel?"] * 9)[0] == models.MINILM
    assert models.model_choice(["12345", "!!!"])[0] == models.MINILM  # nothing to tell the language by
    monkeypatch.setattr(models, "DEFAULT_MODEL", "some/other-model")
    assert models.model_choice(["비밀번호"]) == ("some/other-model", "the default model")

"""The tutorial commands on the real bundled model (and a tiny cased Korean BERT built here): tokens,
hidden states, contextual word vectors, one word across sentences, sentence vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from indexer import BertdexError
from indexer.tutorial.tokens import hidden_states_of, layer_report, load_encoder, token_histogram, token_table
from indexer.tutorial.words import (embed_texts, find_word, merge_pieces, save_vectors, sentence_vectors, similar_word,
                           token_vectors, word_vectors)

SENTENCE = "Here is the sentence I want embeddings for."
BANKS = ["The bank vault was robbed last night.", "She deposited the money at the bank.",
         "We went fishing on the river bank.", "The boat drifted toward the muddy bank of the river."]
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "a", "배", "##를", "##가", "타", "##고", "바",
              "##다", "##로", "고", "##파", "##요", "임", "##베", "##딩", "."]


@pytest.fixture(scope="session")
def full_encoder():
    """The bundled model with every hidden state kept, as the tutorial commands load it."""
    return load_encoder()


@pytest.fixture(scope="session")
def direct(full_encoder):
    """SENTENCE through the transformers BertModel itself, called with output_hidden_states=True (not
    through Encoder.hidden_states): (encoding, [layers+1, tokens, hidden] numpy)."""
    import torch

    encoding = full_encoder.tokenizer(SENTENCE, return_tensors="pt")
    with torch.inference_mode():
        output = full_encoder.model(**encoding, output_hidden_states=True)
    return encoding, torch.stack(output.hidden_states)[:, 0].numpy()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A real, random-weights, cased BERT folder whose vocabulary spells Hangul syllables (no jamo)."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": False}))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model):
    return load_encoder(str(tiny_model))


# -- tokens ---------------------------------------------------------------------------------------


def test_token_table_matches_the_tokenizers_own_ids(full_encoder):
    text = "배를 타고 바다로 나갔다. embeddings"
    table = token_table(full_encoder, text)
    ids = full_encoder.tokenizer(text)["input_ids"]
    assert [t.id for t in table.tokens] == ids
    assert [t.token for t in table.tokens] == full_encoder.tokenizer.convert_ids_to_tokens(ids)
    assert (table.tokens[0].token, table.tokens[0].id, table.tokens[-1].token, table.tokens[-1].id) == ("[CLS]", 101, "[SEP]", 102)
    assert table.unknown == ids.count(100) == 1
    assert [t.token for t in table.tokens if t.word == table.tokens[-2].word] == ["em", "##bed", "##ding", "##s"]
    assert [t.token for t in table.tokens if text[t.start:t.end] == "배"] == ["ᄇ", "##ᅢ"]
    assert table.truncated is False and table.decomposes_hangul is True and table.lowercase is True
    assert any("jamo" in warning and "배 -> ᄇ ##ᅢ" in warning for warning in table.warnings)


def test_token_table_marks_what_the_window_cuts(full_encoder):
    text = " ".join(["word"] * 300)
    table = token_table(full_encoder, text)
    kept = [t.id for t in table.tokens if t.kept]
    assert table.truncated is True and len(table.tokens) == 302 and full_encoder.max_length == 256
    assert kept == full_encoder.tokenizer(text, truncation=True, max_length=256)["input_ids"]
    assert [t.position for t in table.tokens if not t.kept] == list(range(255, 301))


def test_cased_korean_vocabulary_keeps_syllables_whole(tiny_encoder):
    table = token_table(tiny_encoder, "배를 타고")
    assert [t.token for t in table.tokens] == ["[CLS]", "배", "##를", "타", "##고", "[SEP]"]
    assert [t.id for t in table.tokens] == [2, 7, 8, 10, 11, 3]
    assert (table.lowercase, table.decomposes_hangul, table.warnings) == (False, False, ())


# -- hidden states --------------------------------------------------------------------------------


def test_layer_report_has_shape_and_ranges_of_the_models_hidden_states(full_encoder, direct):
    _, states = direct
    report = layer_report(full_encoder, SENTENCE)
    assert report.shape == (7, 14, 384) == states.shape
    assert report.tokens[:3] == ("[CLS]", "here", "is")
    assert [r.layer for r in report.layers] == list(range(7))
    assert np.allclose([r.minimum for r in report.layers], states.min(axis=(1, 2)), atol=1e-4)
    assert np.allclose([r.maximum for r in report.layers], states.max(axis=(1, 2)), atol=1e-4)


def test_histogram_plots_one_tokens_values_in_one_layer(full_encoder, direct, tmp_path):
    _, states = direct
    plot = token_histogram(full_encoder, SENTENCE, tmp_path / "h.png", layer=-2, position=5)
    assert (plot.layer, plot.position, plot.token) == (5, 5, "i")
    assert np.allclose(plot.values, states[5, 5], atol=1e-4)
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(BertdexError, match="--token 14 is out of range"):
        token_histogram(full_encoder, SENTENCE, tmp_path / "h.png", position=14)


def test_an_encoder_cut_below_the_top_refuses_all_layers(tiny_model):
    from indexer.embed.encoder import Encoder

    cut = Encoder(tiny_model, keep_layers=2)
    with pytest.raises(BertdexError, match="computes hidden states 0..2 only"):
        hidden_states_of(cut, "배를 타고")


# -- word vectors ---------------------------------------------------------------------------------


def test_sum_last4_equals_the_sum_of_the_models_last_four_hidden_states(full_encoder, direct):
    encoding, states = direct
    expected_tokens = states[-4:].sum(axis=0)
    words = word_vectors(full_encoder, SENTENCE, strategy="sum-last4", merge="mean")
    positions = {}
    for position, word in enumerate(encoding.word_ids(0)):
        if word is not None:
            positions.setdefault(word, []).append(position)
    expected = np.stack([expected_tokens[p].mean(axis=0) for p in positions.values()])
    assert words.vectors.shape == (9, 384)
    assert np.allclose(words.vectors, expected, atol=1e-4)


def test_concat_last4_has_four_times_the_hidden_size_last_layer_first(full_encoder):
    concat = word_vectors(full_encoder, SENTENCE, strategy="concat-last4")
    last = word_vectors(full_encoder, SENTENCE, strategy="last")
    second = word_vectors(full_encoder, SENTENCE, strategy="second-last")
    assert concat.vectors.shape == (9, 4 * full_encoder.hidden_size) == (9, 1536)
    assert np.allclose(concat.vectors[:, :384], last.vectors, atol=1e-6)
    assert np.allclose(concat.vectors[:, 384:768], second.vectors, atol=1e-6)


def test_a_word_split_into_pieces_comes_back_as_one_word(full_encoder):
    mean = word_vectors(full_encoder, SENTENCE, strategy="last", merge="mean")
    first = word_vectors(full_encoder, SENTENCE, strategy="last", merge="first")
    last = word_vectors(full_encoder, SENTENCE, strategy="last", merge="last")
    assert [w.text for w in mean.words] == ["Here", "is", "the", "sentence", "I", "want", "embeddings", "for", "."]
    word = mean.words[6]
    assert (word.pieces, word.start, word.end) == (("em", "##bed", "##ding", "##s"), 28, 38)
    assert SENTENCE[28:38] == "embeddings"
    states, _ = hidden_states_of(full_encoder, SENTENCE)
    assert np.allclose(mean.vectors[6], states[-1, 7:11].mean(axis=0), atol=1e-6)
    assert np.allclose(first.vectors[6], states[-1, 7], atol=1e-6)
    assert np.allclose(last.vectors[6], states[-1, 10], atol=1e-6)
    assert np.allclose(mean.vectors[5], first.vectors[5]) and np.allclose(first.vectors[5], last.vectors[5])
    korean = word_vectors(full_encoder, "임베딩을 배운다")
    assert [w.text for w in korean.words] == ["임베딩을", "배운다"] and len(korean.words[0].pieces) > 4


def test_pure_helpers_do_what_their_docstrings_say():
    assert merge_pieces(np.array([[1, 1], [3, 3], [5, 5]]), [[0, 1], [2]], "mean").tolist() == [[2, 2], [5, 5]]
    assert find_word("강 위의 배를 보았다", "배") == (5, 6)
    assert find_word("배를 탄 배", "배") == (5, 6)  # a whole token wins over one it starts
    with pytest.raises(BertdexError, match="concat-last4, sum-last4, last, second-last"):
        token_vectors(np.zeros((7, 3, 4)), "sum-all")
    with pytest.raises(BertdexError, match="at least 4 layers; this one has 2"):
        token_vectors(np.zeros((3, 3, 4)), "sum-last4")
    with pytest.raises(BertdexError, match="not in the sentence"):
        find_word("강 위의 배", "bank")


# -- one word across sentences --------------------------------------------------------------------


def test_a_words_vector_differs_between_contexts_and_repeats_for_the_same_sentence(full_encoder):
    result = similar_word(full_encoder, [*BANKS, BANKS[0]], "bank")
    matrix = result.matrix
    assert np.array_equal(result.vectors[0], result.vectors[4]) and matrix[0, 4] == pytest.approx(1.0, abs=1e-6)
    assert matrix[0, 2] < 0.95 and not np.allclose(result.vectors[0], result.vectors[2])
    assert matrix[0, 1] > matrix[0, 2]  # the money bank is closer to the vault than the river bank is
    assert matrix[2, 3] > matrix[2, 0]  # and the river banks are closer to each other
    assert np.allclose(matrix, matrix.T) and [o.pieces for o in result.occurrences] == [("bank",)] * 5
    assert (result.occurrences[2].start, result.occurrences[2].end) == (29, 33)  # "bank." matched by its start


def test_korean_word_glued_to_a_particle_is_found_by_its_characters(full_encoder, tiny_encoder):
    sentences = ["배를 타고 바다로", "고파요 배가"]
    cased = similar_word(tiny_encoder, sentences, "배")
    assert [(o.start, o.pieces) for o in cased.occurrences] == [(0, ("배",)), (4, ("배",))]
    assert cased.vectors.shape == (2, 32) and cased.matrix[0, 1] < 0.999
    jamo = similar_word(full_encoder, sentences, "배")
    assert [o.pieces for o in jamo.occurrences] == [("ᄇ", "##ᅢ")] * 2


# -- sentence vectors and files -------------------------------------------------------------------


def test_sentence_vectors_with_a_chosen_recipe_are_the_normalized_mean_of_that_layer(tiny_model, tiny_encoder):
    result = sentence_vectors(["배를 타고", "  타고   배를 "], model=str(tiny_model), layer=-2, pooling="mean",
                              precision="fp32", backend="torch")  # the reference below is PyTorch fp32
    assert (result.recipe.layer, result.recipe.pooling, result.recipe.dimension) == (3, "mean", 32)
    assert result.texts == ("배를 타고", "타고 배를")
    states, _ = hidden_states_of(tiny_encoder, "배를 타고")
    expected = states[3].mean(axis=0)
    assert np.allclose(result.vectors[0], expected / np.linalg.norm(expected), atol=1e-5)
    assert not np.allclose(result.vectors[0], result.vectors[1], atol=1e-3)
    assert np.allclose(embed_texts(tiny_encoder, result.recipe, ["배를 타고"]).vectors[0], result.vectors[0], atol=1e-6)
    with pytest.raises(BertdexError, match="come from the index's recipe"):
        sentence_vectors(["x"], index="anywhere", layer=3)


def test_save_vectors_writes_json_or_npy_with_labels_beside(tmp_path):
    vectors = np.array([[1.0, 2.0], [3.0, 4.5]], dtype=np.float32)
    labels = [{"word": "배"}, {"word": "bank"}]
    assert save_vectors(tmp_path / "w.npy", vectors, labels, {"strategy": "last"}) == [tmp_path / "w.npy", tmp_path / "w.json"]
    assert np.array_equal(np.load(tmp_path / "w.npy"), vectors)
    sidecar = json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))
    assert sidecar == {"strategy": "last", "shape": [2, 2], "items": labels}
    save_vectors(tmp_path / "v.json", vectors, labels, {})
    assert json.loads((tmp_path / "v.json").read_text())["items"][1] == {"word": "bank", "vector": [3.0, 4.5]}
    with pytest.raises(BertdexError, match="write .json or .npy"):
        save_vectors(tmp_path / "w.csv", vectors, labels, {})


# -- the commands ---------------------------------------------------------------------------------


def test_cli_tokens_prints_the_tokenizers_ids_as_json(full_encoder):
    result = run_cli("tutorial", "tokens", "배를 타고 embeddings", "--json", check=True)
    data = json.loads(result.stdout)
    assert [t["id"] for t in data["tokens"]] == full_encoder.tokenizer("배를 타고 embeddings")["input_ids"]
    assert data["unknown"] == 0 and data["truncated"] is False and "jamo" in data["warnings"][0]


def test_cli_layers_reports_shape_and_writes_a_histogram(tmp_path, direct):
    _, states = direct
    result = run_cli("tutorial", "layers", SENTENCE, "--histogram", tmp_path / "h.png", "--layer", "5", "--token", "5", check=True)
    assert "hidden states: [7 layers x 14 tokens x 384 features]" in result.stdout
    assert f"{states[6].max():.4f}" in result.stdout
    assert "histogram of token 5 'i' in hidden state 5 (384 values)" in result.stdout
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_words_writes_npy_with_the_words_beside(tmp_path, full_encoder):
    run_cli("tutorial", "words", SENTENCE, "--strategy", "concat-last4", "--merge", "first", "--out", tmp_path / "w.npy", check=True)
    saved = np.load(tmp_path / "w.npy")
    expected = word_vectors(full_encoder, SENTENCE, strategy="concat-last4", merge="first")
    assert saved.shape == (9, 1536) and np.allclose(saved, expected.vectors, atol=1e-5)
    sidecar = json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))
    assert [item["word"] for item in sidecar["items"]][6] == "embeddings" and sidecar["strategy"] == "concat-last4"


def test_cli_similar_word_prints_the_matrix(full_encoder):
    sentences = ["배가 고파서 밥을 먹었다", "배를 타고 바다로 나갔다"]
    result = run_cli("tutorial", "similar-word", *sentences, "--word", "배", "--json", check=True)
    data = json.loads(result.stdout)
    expected = similar_word(full_encoder, sentences, "배").matrix
    assert np.allclose(data["matrix"], expected, atol=1e-5) and data["occurrences"][1]["pieces"] == ["ᄇ", "##ᅢ"]


def test_cli_embed_with_an_index_gives_the_vectors_search_uses(faq_index_master, full_encoder):
    from search import Searcher

    questions = ["I forgot my password", "where is my parcel"]
    result = run_cli("tutorial", "embed", *questions, "--index", faq_index_master, "--json", check=True)
    vectors = np.array([json.loads(line)["vector"] for line in result.stdout.splitlines()])
    searcher = Searcher(faq_index_master)  # made as `bertdex query` makes it: the measured path of this machine
    assert vectors.shape == (2, 384) and np.allclose(vectors, searcher.embed(questions), atol=1e-6)
    exact = Searcher(faq_index_master, encoder=full_encoder).embed(questions)  # PyTorch fp32, all layers
    assert np.min(np.sum(vectors * exact, axis=1)) >= 0.999


def test_cli_error_is_one_line_on_stderr(faq_index_master):
    result = run_cli("tutorial", "embed", "hello", "--index", faq_index_master, "--layer", "3")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --layer and --pooling come from the index's recipe with --index: leave them out"


def test_old_top_level_name_still_works_and_english_says_nothing_of_hangul():
    result = run_cli("tokens", SENTENCE, check=True)  # the old name: a hidden alias for one version
    assert result.stderr.splitlines()[0] == ("note: `bertdex tokens` is now `bertdex tutorial tokens`; "
                                             "the old name goes in the next version")
    assert "lower-cases: yes" in result.stdout and "Hangul" not in result.stdout

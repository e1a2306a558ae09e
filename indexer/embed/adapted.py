"""A model adapted to one help desk: its base BERT fine-tuned on (question, right entry) pairs, kept in the index folder.

Training is plain PyTorch on the CPU: multiple-negatives ranking (each question against its own entry
and every other entry of its batch, cross-entropy over `scale` x cosine), the recipe's own layer and
pooling, AdamW, a fixed number of steps, every draw from `seed` (same pairs, seed and threads: same
weights). A pair carries a weight (an agent verdict weighed by agreement counts less than a label).
The result is saved as an ordinary sentence-transformers folder named by its content,
`adapted-<checksum>`, under the index's `models/`; `resolve_model_folder` finds it there (the index
folders this process opened) or in the user's model cache, so every path that loads "a local BERT
folder" (searcher, verify, repair, Ray workers, ONNX export) loads it. This module does not choose
whether to adapt (search.quality.adapt) nor write the index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


from indexer.errors import BertdexError

PREFIX = "adapted-"
MODELS = "models"  # inside an index folder
PROVENANCE = "adapted.json"
SCALE = 20.0
LEARNING_RATE = 2e-5
BATCH = 32
TRAIN_LENGTH = 128  # tokens per text while training: the head of a long entry says what it answers
SEED = 27
# files copied from the base folder: the tokenizer and what sentence-transformers says about pooling and prompts
_KEPT = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model",
         "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_roots: list[Path] = []  # `models/` of the index folders this process opened


@dataclass(frozen=True)
class Pair:
    """A question and the text of an entry that answers it; `weight` scales its loss; `id` names it."""

    id: str
    question: str
    entry: str
    weight: float = 1.0


@dataclass(frozen=True)
class Adaptation:
    """Where an adapted model came from: what the manifest records (IndexSettings.adapted)."""

    model: str            # adapted-<checksum>
    base_model: str
    base_checksum: str
    pairs: int
    pairs_hash: str
    seed: int
    steps: int
    batch: int
    learning_rate: float
    scale: float
    layer: int
    pooling: str
    seconds: float
    sources: dict         # pairs per source: {"labelled": 120, "groups": 40, "feedback": 3}

    def to_dict(self) -> dict:
        return asdict(self)


def is_adapted(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)


def remember_index(folder: Path) -> None:
    """Let this process find the adapted models of index `folder` (called when its manifest is read)."""
    root = Path(folder).resolve() / MODELS
    if root not in _roots:
        _roots.insert(0, root)


def find_adapted(name: str, cache: Path) -> Path:
    """The folder of adapted model `name`: in an opened index's models/, else in `cache`."""
    for root in [*_roots, cache]:
        folder = root / name
        if (folder / "config.json").is_file():
            return folder
    raise BertdexError(f"model {name} is an adapted model and its folder is missing: it lives in the index "
                       f"folder's {MODELS}/{name} (copy the whole index folder) or in {cache}")


def pairs_hash(pairs: list[Pair]) -> str:
    """sha256 of the pairs' ids, texts and weights, in order: names the training data in the provenance."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.id, pair.question, pair.entry, round(pair.weight, 6)], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def steps_for(pairs: int, *, epochs: float = 4.0, batch: int = BATCH, least: int = 8, most: int = 30) -> int:
    """Training steps for `pairs`: `epochs` passes, within [least, most] (minutes on 2 cores, not hours).

    steps_for(120) -> 15, steps_for(10) -> 8, steps_for(5000) -> 30"""
    return int(min(most, max(least, math.ceil(epochs * pairs / batch))))


def free_threads() -> int:
    """Threads worth using here now: the cores the load average leaves free, at least 1.

    On a busy machine one thread trains several times faster than threads that wait for each other
    (2 cores at load 13: 2.5-3.4 s a step on one thread, 8-36 s on two)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(torch.get_num_threads(), int(cores - load + 0.5)))


def train(base: Path, pairs: list[Pair], *, layer: int, pooling: str, query_prefix: str = "", passage_prefix: str = "",
          steps: int, batch: int = BATCH, learning_rate: float = LEARNING_RATE, scale: float = SCALE,
          seed: int = SEED, threads: int | None = None, progress: Callable[[int, int, float], None] | None = None):
    """The base model (a folder) fine-tuned on `pairs`; returns (model, tokenizer). `progress(step, steps, loss)`.

    Each step draws `batch` pairs (a shuffled pass, then the next), embeds both sides with `pooling` of hidden
    state `layer`, and takes cross-entropy of scale x cosine against the pair's own entry; another pair of
    the batch with the same entry text is no negative (masked). `threads`: default free_threads().
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or free_threads())
    try:
        return _train(base, pairs, layer, pooling, query_prefix, passage_prefix, steps, batch, learning_rate, scale,
                      seed, progress)
    finally:
        torch.set_num_threads(before)


def _train(base, pairs, layer, pooling, query_prefix, passage_prefix, steps, batch, learning_rate, scale, seed, progress):
    import numpy as np
    import torch
    import transformers

    from indexer.embed.models import trained_pooling

    if not pairs:
        raise BertdexError("nothing to adapt on: no (question, entry) pairs")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base), use_fast=True)
    model = transformers.AutoModel.from_pretrained(str(base), dtype=torch.float32)
    model.train()
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # unused by any pooling here; its weights would get no gradient
    # the token embeddings stay as they are: half of a small model's weights, and few pairs touch few tokens
    model.embeddings.requires_grad_(False)
    trained = trained_pooling(Path(base))
    length = min(TRAIN_LENGTH, trained.max_length or TRAIN_LENGTH) if trained else TRAIN_LENGTH
    trained_weights = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained_weights, lr=learning_rate, weight_decay=0.01, foreach=True)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    order: list[int] = []
    for step in range(steps):
        if len(order) < min(batch, len(pairs)):
            order += rng.permutation(len(pairs)).tolist()
        chosen, order = order[: min(batch, len(pairs))], order[min(batch, len(pairs)):]
        part = [pairs[i] for i in chosen]
        questions = _embed(model, tokenizer, [query_prefix + p.question for p in part], layer, pooling, length)
        entries = _embed(model, tokenizer, [passage_prefix + p.entry for p in part], layer, pooling, length)
        logits = scale * questions @ entries.T
        texts = [p.entry for p in part]
        same = torch.tensor([[a == b and i != j for j, b in enumerate(texts)] for i, a in enumerate(texts)])
        logits = logits.masked_fill(same, float("-inf"))
        losses = torch.nn.functional.cross_entropy(logits, torch.arange(len(part)), reduction="none")
        weights = torch.tensor([p.weight for p in part], dtype=torch.float32)
        loss = (losses * weights).mean()  # absolute weights: pairs weighed down move the model less
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained_weights, 1.0)
        optimizer.step()
        schedule.step()
        if progress:
            progress(step + 1, steps, float(loss.detach()))
    model.eval()
    return model, tokenizer


def _embed(model, tokenizer, texts: list[str], layer: int, pooling: str, length: int):
    """Unit vectors of `pooling` over hidden state `layer` (masked as indexer.embed.pooling does), with gradients."""
    import torch

    encoded = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
    inputs = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[layer]
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    top = hidden.masked_fill(mask == 0, -1e9).max(1).values
    pooled = {"mean": mean, "max": top, "cls": hidden[:, 0], "mean-max": torch.cat([mean, top], dim=1)}[pooling]
    return torch.nn.functional.normalize(pooled, dim=-1)


def save(model, tokenizer, base: Path, into: Path, provenance: dict) -> tuple[str, Path]:
    """Write the adapted model as `into`/adapted-<checksum> (a sentence-transformers folder); (name, folder).

    Written in a temporary folder beside and renamed, so a folder of that name is always whole; the same
    weights give the same name (an existing one is kept)."""
    from indexer.embed.models import model_checksum

    into.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".adapting-", dir=into))
    try:
        model.save_pretrained(str(partial), safe_serialization=True)
        for name in _KEPT:
            if (Path(base) / name).is_file():
                shutil.copy2(Path(base) / name, partial / name)
        for sub in Path(base).iterdir():
            if sub.is_dir() and (sub / "config.json").is_file() and sub.name[:1].isdigit():  # 1_Pooling/
                shutil.copytree(sub, partial / sub.name)
        name = PREFIX + model_checksum(partial)
        (partial / PROVENANCE).write_text(json.dumps({**provenance, "model": name}, indent=1, ensure_ascii=False))
        target = into / name
        if (target / "config.json").is_file():
            shutil.rmtree(partial)
        else:
            os.replace(partial, target)
        return name, target
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def adapt_model(base_name: str, pairs: list[Pair], into: Path, *, layer: int, pooling: str, query_prefix: str = "",
                passage_prefix: str = "", steps: int | None = None, seed: int = SEED, sources: dict | None = None,
                progress: Callable[[int, int, float], None] | None = None) -> Adaptation:
    """Train on `pairs` from model `base_name` and save the result under `into`; its provenance."""
    from indexer.embed.models import model_checksum, resolve_model_folder

    base = resolve_model_folder(base_name)
    steps = steps or steps_for(len(pairs))
    started = time.perf_counter()
    model, tokenizer = train(base, pairs, layer=layer, pooling=pooling, query_prefix=query_prefix,
                             passage_prefix=passage_prefix, steps=steps, seed=seed, progress=progress)
    provenance = dict(base_model=base_name, base_checksum=model_checksum(base), pairs=len(pairs),
                      pairs_hash=pairs_hash(pairs), seed=seed, steps=steps, batch=BATCH, learning_rate=LEARNING_RATE,
                      scale=SCALE, layer=layer, pooling=pooling, seconds=round(time.perf_counter() - started, 1),
                      sources=dict(sources or {}))
    name, _ = save(model, tokenizer, base, into, provenance)
    return Adaptation(model=name, **provenance)


def provenance_of(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None


def remove_unused(index_folder: Path, keep: set[str]) -> None:
    """Delete adapted models in the index's models/ other than `keep` (and unfinished ones)."""
    root = Path(index_folder) / MODELS
    if not root.is_dir():
        return
    for sub in root.iterdir():
        if sub.is_file() and sub.suffix == ".npy" and sub.name.startswith("map-") and sub.stem not in keep:
            sub.unlink(missing_ok=True)  # a learned map (indexer.embed.projection) no recipe uses
        elif sub.is_dir() and (sub.name.startswith(".adapting-") or (is_adapted(sub.name) and sub.name not in keep)):
            shutil.rmtree(sub, ignore_errors=True)

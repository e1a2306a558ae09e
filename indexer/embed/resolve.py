"""From what the user asked for (model, layer, pooling, ...) to a Recipe and an Encoder that follows it.

`auto` means: a checkpoint trained as a sentence encoder that says so (sentence-transformers
modules.json + pooling config) is pooled exactly as it was trained, from its last layer; a plain
BERT gets the bert-as-service recipe, the mean of the second-to-last layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from indexer.embed.adapted import is_adapted
from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError
from indexer.embed.models import declared_prompts, default_model, layer_count, model_checksum, resolve_model_folder, trained_pooling
from indexer.embed.projection import load_map
from indexer.embed.recipe import Recipe, absolute_layer, check_pooling


@dataclass(frozen=True)
class Resolved:
    recipe: Recipe
    encoder: Encoder
    reason: str


def resolve_recipe(model: str | None = None, *, layer: int | None = None, pooling: str | None = None,
                   exclude_special: bool = False, max_length: int | None = None,
                   precision: str = "auto", threads: int | None = None, backend: str = "auto",
                   prefixes: tuple[str, str] | None = None) -> Resolved:
    """The recipe for these choices (None = auto) and an encoder loaded for it.

    `prefixes`: (query, passage) text put before questions and entries; None = what the model declares
    (sentence-transformers prompts, e.g. e5's "query: " / "passage: "), else none.
    """
    if pooling is not None:
        check_pooling(pooling)
    model = model or default_model()
    folder = resolve_model_folder(model)
    trained = trained_pooling(folder)
    checksum = model_checksum(folder)
    if trained:
        reason = f"sentence-transformers checkpoint ({trained.source}): {trained.pooling} of the last layer, as trained"
        auto_layer, auto_pooling = -1, trained.pooling
    else:
        reason = "plain BERT checkpoint: mean of the second-to-last layer (the bert-as-service recipe)"
        auto_layer, auto_pooling = -2, "mean"
    chosen_layer = absolute_layer(auto_layer if layer is None else layer, layer_count(folder))
    chosen_pooling = pooling or auto_pooling
    if layer is not None or pooling is not None:
        reason = f"chosen: {chosen_pooling} of hidden state {chosen_layer} (auto would be: {reason})"
    encoder = Encoder(folder, max_length=max_length or (trained.max_length if trained else None),
                      keep_layers=chosen_layer, precision=precision, threads=threads, backend=backend, checksum=checksum)
    query_prefix, passage_prefix = declared_prompts(folder) if prefixes is None else prefixes
    if query_prefix or passage_prefix:
        reason += f"; prefixes {query_prefix!r} on questions, {passage_prefix!r} on entries"
    recipe = Recipe(
        model=model, model_checksum=checksum, lowercase=encoder.lowercase,
        layer=chosen_layer, pooling=chosen_pooling, exclude_special=exclude_special,
        max_length=encoder.max_length, dimension=encoder.hidden_size * (2 if chosen_pooling == "mean-max" else 1),
        query_prefix=query_prefix, passage_prefix=passage_prefix,
    )
    return Resolved(recipe, encoder, reason)


def with_companion(resolved: Resolved, companion: str, share: float, *, precision: str = "auto",
                   threads: int | None = None, backend: str = "auto") -> Resolved:
    """`resolved` answering together with `companion` (its auto recipe): `share` of the score is the companion's."""
    from indexer.embed.onnx_model import spinning
    from indexer.embed.pair import PairEncoder

    try:
        with spinning(False):
            other = resolve_recipe(companion, exclude_special=resolved.recipe.exclude_special, precision=precision,
                                   threads=threads, backend=backend)
    except BertdexError as error:
        raise BertdexError(f"--companion {companion}: {error}") from None
    if other.recipe.model_checksum == resolved.recipe.model_checksum:
        raise BertdexError(f"--companion {companion} is the index's own model: name another one")
    recipe = resolved.recipe.with_companion(other.recipe, share)
    reason = (f"{resolved.reason}; scored with companion {other.recipe.model} ({share:.2g} of the score; "
              f"{other.reason})")
    return Resolved(recipe, PairEncoder(resolved.encoder, other.encoder, recipe), reason)


def encoder_for(recipe: Recipe, *, model: str | None = None, precision: str = "auto",
                threads: int | None = None, backend: str = "auto", purpose: str = "bulk") -> Encoder:
    """An encoder for an index's recipe; refuses a model whose weights are not the ones indexed.

    A recipe with a companion gets a paired encoder (indexer.embed.pair); `model` names the first model.
    `purpose`: "bulk" (embedding entries) or "question" (searching), see Encoder.
    """
    if recipe.companion is not None:
        if recipe.projection or recipe.companion.projection:
            raise BertdexError("a learned map is not supported on an index with a companion model: re-tune it without --adapt")
        from indexer.embed.onnx_model import spinning
        from indexer.embed.pair import PairEncoder

        options = dict(precision=precision, threads=threads, backend=backend, purpose=purpose)
        with spinning(False):
            return PairEncoder(encoder_for(recipe.alone(), model=model, **options),
                               encoder_for(recipe.companion, **options), recipe)
    if model is not None and is_adapted(recipe.model) and not Path(model).expanduser().is_dir():
        model = None  # an adapted index's model is in its folder; --model ($BERTDEX_MODEL) names at most its base
    name = model or recipe.model
    folder = resolve_model_folder(name)
    checksum = model_checksum(folder)
    if checksum != recipe.model_checksum:
        raise BertdexError(
            f"model {name!r} (checksum {checksum}) is not the model this index was built with "
            f"({recipe.model!r}, checksum {recipe.model_checksum}): use that model or rebuild the index"
        )
    encoder = Encoder(folder, max_length=recipe.max_length, keep_layers=recipe.layer, precision=precision,
                      threads=threads, backend=backend, checksum=checksum, purpose=purpose)
    if recipe.projection:
        encoder.projection = (recipe.layer, recipe.pooling, load_map(recipe.projection))
    return encoder


def machine_report(model: str | None = None, *, remeasure: bool = False, precision: str = "auto",
                   backend: str = "auto", threads: int | None = None) -> dict:
    """What `bertdex doctor` prints: this machine, the paths tried for the model's auto recipe, and the one kept.

    `remeasure`: forget this machine's saved choice for the model and time the candidates again.
    """
    from indexer.embed import choose, onnx_model

    model = model or default_model()
    folder = resolve_model_folder(model)
    checksum = model_checksum(folder)
    if remeasure:
        for saved in (onnx_model.DEFAULT_CACHE / "choices").glob(f"{checksum}-*.json"):
            saved.unlink(missing_ok=True)
    encoder = resolve_recipe(model, precision=precision, backend=backend, threads=threads).encoder
    question = Encoder(folder, max_length=encoder.max_length, keep_layers=encoder.keep_layers, precision=precision,
                       backend=backend, threads=threads, checksum=checksum, purpose="question")
    once = Encoder(folder, max_length=encoder.max_length, keep_layers=encoder.keep_layers, precision=precision,
                   backend=backend, threads=threads, checksum=checksum, purpose="once")
    return {
        "model": model, "folder": str(folder), "machine": choose.machine_key(),
        "native_bf16": choose.native_bf16(), "chosen": encoder.path.label(), "question_path": question.path.label(),
        "once_path": once.path.label(),
        "reason": encoder.path_reason,
        "measurements": [{"path": m.path.label(), "texts_per_s": round(m.bulk_per_s, 1),
                          "one_question_ms": round(m.single_ms, 2),
                          "long_question_ms": None if m.long_ms is None else round(m.long_ms, 2), "cosine_min_vs_fp32": round(m.cosine_min, 6),
                          "top1_agreement": round(m.top1_agreement, 3), "passes": m.passes, "error": m.error}
                         for m in encoder.measurements],
    }

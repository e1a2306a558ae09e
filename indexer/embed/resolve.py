"""From what the user asked for (model, layer, pooling, ...) to a Recipe and an Encoder that follows it.

`auto` means: a checkpoint trained as a sentence encoder that says so (sentence-transformers
modules.json + pooling config) is pooled exactly as it was trained, from its last layer; a plain
BERT gets the bert-as-service recipe, the mean of the second-to-last layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError
from indexer.embed.models import DEFAULT_MODEL, model_checksum, resolve_model_folder, trained_pooling
from indexer.embed.recipe import Recipe, absolute_layer, check_pooling


@dataclass(frozen=True)
class Resolved:
    recipe: Recipe
    encoder: Encoder
    reason: str


def resolve_recipe(model: str = DEFAULT_MODEL, *, layer: int | None = None, pooling: str | None = None,
                   exclude_special: bool = False, max_length: int | None = None,
                   precision: str = "auto", threads: int | None = None, backend: str = "auto") -> Resolved:
    """The recipe for these choices (None = auto) and an encoder loaded for it."""
    if pooling is not None:
        check_pooling(pooling)
    folder = resolve_model_folder(model)
    trained = trained_pooling(folder)
    checksum = model_checksum(folder)
    probe = Encoder(folder, max_length=max_length or (trained.max_length if trained else None),
                    keep_layers=None, precision=precision, threads=threads, backend=backend, checksum=checksum)
    if trained:
        reason = f"sentence-transformers checkpoint ({trained.source}): {trained.pooling} of the last layer, as trained"
        auto_layer, auto_pooling = -1, trained.pooling
    else:
        reason = "plain BERT checkpoint: mean of the second-to-last layer (the bert-as-service recipe)"
        auto_layer, auto_pooling = -2, "mean"
    chosen_layer = absolute_layer(auto_layer if layer is None else layer, probe.num_layers)
    chosen_pooling = pooling or auto_pooling
    if layer is not None or pooling is not None:
        reason = f"chosen: {chosen_pooling} of hidden state {chosen_layer} (auto would be: {reason})"
    recipe = Recipe(
        model=model, model_checksum=checksum, lowercase=probe.lowercase,
        layer=chosen_layer, pooling=chosen_pooling, exclude_special=exclude_special,
        max_length=probe.max_length, dimension=probe.hidden_size * (2 if chosen_pooling == "mean-max" else 1),
    )
    probe._truncate_layers(chosen_layer)
    return Resolved(recipe, probe, reason)


def encoder_for(recipe: Recipe, *, model: str | None = None, precision: str = "auto",
                threads: int | None = None, backend: str = "auto") -> Encoder:
    """An encoder for an index's recipe; refuses a model whose weights are not the ones indexed."""
    name = model or recipe.model
    folder = resolve_model_folder(name)
    checksum = model_checksum(folder)
    if checksum != recipe.model_checksum:
        raise BertdexError(
            f"model {name!r} (checksum {checksum}) is not the model this index was built with "
            f"({recipe.model!r}, checksum {recipe.model_checksum}): use that model or rebuild the index"
        )
    encoder = Encoder(folder, max_length=recipe.max_length, keep_layers=recipe.layer,
                      precision=precision, threads=threads, backend=backend, checksum=checksum)
    return encoder

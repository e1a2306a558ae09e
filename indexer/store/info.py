"""What `bertdex info` shows: the manifest, the recipe and why, and warnings about the model."""

from __future__ import annotations

from pathlib import Path

from indexer.store.coverage import index_warnings
from indexer.embed.machine import saved_paths
from indexer.embed.models import resolve_model_folder, trained_pooling
from indexer.embed.onnx_model import DEFAULT_CACHE
from indexer.store.folder import open_manifest
from indexer.store.segments import records_of


def index_info(folder: str | Path) -> dict:
    """The index's manifest as plain data, with the reason for its recipe and the vectors file's state."""
    manifest = open_manifest(folder)
    recipe = manifest.recipe
    vectors_file = vectors_file_state(Path(folder), manifest)
    return {
        "folder": str(folder),
        "documents": manifest.documents,
        "vectors": manifest.vectors,
        "model": recipe.model,
        "model_checksum": recipe.model_checksum,
        "recipe": {
            "layer": recipe.layer, "pooling": recipe.pooling, "exclude_special": recipe.exclude_special,
            "max_length": recipe.max_length, "dimension": recipe.dimension, "lowercase": recipe.lowercase,
            **({"map": recipe.projection} if recipe.projection else {}),
        },
        "recipe_reason": recipe_reason(recipe),
        **({"companion": {"model": recipe.companion.model, "share": recipe.companion_share, "scores": recipe.describe(),
                          "layer": recipe.companion.layer, "pooling": recipe.companion.pooling,
                          "dimension": recipe.companion.dimension}} if recipe.companion else {}),
        **({"adapted": {"from": manifest.settings.adapted.get("base_model"),
                        "kind": manifest.settings.adapted.get("kind", "fine-tuned"),
                        "weights": f"{Path(folder) / 'models' / (recipe.projection + '.npy' if recipe.projection else recipe.model)}",
                        **{k: manifest.settings.adapted.get(k) for k in ("base_checksum", "pairs", "pairs_hash", "sources",
                                                                         "seed", "steps")}}}
           if manifest.settings.adapted else {}),
        "encoded_with": list(manifest.encoded_with),
        "vectors_note": vectors_note(manifest.encoded_with),
        # the two paths this machine runs the index's model on (bulk: index, add, re-embed; question: query,
        # serve), from its saved choice; None until it has measured them (indexer.embed.choose)
        "paths_here": saved_paths(DEFAULT_CACHE, recipe.model_checksum, recipe.layer),
        "index_type": manifest.index_type,
        "index_params": manifest.index_params,
        "cut": {"min_score": manifest.settings.search.min_score, "source": manifest.settings.search.cut_source(),
                "rule": (manifest.settings.search.cut or {}).get("rule")},
        "tuned": manifest.settings.search.tuned is not None,
        "settings": manifest.settings.to_dict(),
        "generation": manifest.generation,
        "segments": [{"file": r["file"], "kind": r.get("kind", manifest.index_type), "vectors": r.get("ntotal")}
                     for r in records_of(manifest)],
        "deleted_vectors": len(manifest.deleted),  # still in a segment file until a merge or `bertdex compact`
        "format_version": manifest.format_version,
        "created": manifest.created,
        "updated": manifest.updated,
        "vectors_file": vectors_file,
        "warnings": ([] if vectors_file == "ok" else [vectors_file]) + index_warnings(folder),
    }


def vectors_file_state(folder: Path, manifest) -> str:
    """"ok", or what is wrong with a FAISS file the manifest names (its segments): missing, size, header,
    and the checksum when the file is small enough for opening to check it (integrity.CHECKSUM_AT_OPEN_BYTES)."""
    from indexer.errors import IndexDamaged
    from indexer.store.integrity import check_faiss_file, checksum_affordable

    try:
        for record in records_of(manifest):
            checked = {name: record[name] for name in ("bytes", "blake2b", "ntotal") if name in record}
            check_faiss_file(Path(folder) / record["file"], checked, checksum=checksum_affordable(checked))
    except IndexDamaged as error:
        return str(error)
    return "ok"


def recipe_reason(recipe) -> str:
    """Why this recipe: what `auto` would pick for the model, and whether this one is it."""
    try:
        trained = trained_pooling(resolve_model_folder(recipe.model))
    except Exception:  # the model is not reachable here; the manifest still says what was used
        return "model not available here to compare with auto"
    if trained:
        auto = f"{trained.pooling} of the last layer, as the sentence-transformers checkpoint was trained"
    else:
        auto = "mean of the second-to-last layer (plain BERT, the bert-as-service recipe)"
    return f"auto for this model is: {auto}"


def vectors_note(encoded_with) -> str:
    """How the stored vectors were computed, and what that means for questions embedded on another path."""
    if not encoded_with:
        return "no vectors yet"
    made = ", ".join(encoded_with)
    return (f"vectors made with {made}; questions are embedded with the path measured fastest on the machine "
            "that asks, which agrees with PyTorch fp32 at cosine >= 0.999 on every probe text (else it is not used)")

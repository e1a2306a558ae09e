"""Rewrite an index's stored search settings, or re-embed all its entries with another layer/pooling, in one commit.

Both refuse when the index changed (another commit landed) since the caller read it, so a tuning
run never overwrites entries it did not see. Re-embedding reads the entries from SQLite (the index
is its own source) and writes them back through a writer with replace semantics: readers see the
old index or the new one, never a mix.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from indexer.embed.adapted import is_adapted, remove_unused
from indexer.errors import BertdexError
from indexer.embed.projection import load_map
from indexer.embed.resolve import Resolved, resolve_recipe, with_companion
from indexer.ingest.cut import ensure_sample
from indexer.ingest.embedding import embed_entries
from indexer.store.folder import IndexWriter, Manifest, check_index_folder, connect, read_manifest
from indexer.store.settings import SearchSettings
from indexer.store.streamed import streams

CHUNK = 2048


def store_search_settings(folder: str | Path, search: SearchSettings, *,
                          expected_generation: int | None = None) -> Manifest:
    """Replace manifest.settings.search (mode, weight, fusion, min_score, ...) in a new commit."""
    folder = check_index_folder(Path(folder))
    with IndexWriter.open(folder) as writer:
        _check_generation(writer.manifest.generation, expected_generation, folder)
        manifest = writer.manifest
        writer.set_manifest(replace(manifest, settings=replace(manifest.settings, search=search)))
        return writer.commit()


def reembed_index(folder: str | Path, *, layer: int, pooling: str, search: SearchSettings | None = None,
                  expected_generation: int | None = None, threads: int | None = None,
                  model: str | None = None, companion: str | None = None, share: float = 0.0,
                  adapted: dict | None = None, projection: str = "") -> Manifest:
    """Embed every entry again with hidden state `layer` and `pooling` (same model, length, windows: `embed_entries`).

    `model`: another model (tune chose it): its own length and prefixes, the index's windows.
    `companion`, `share`: the model answering with it and its part of the score (indexer.embed.pair);
    without them the new recipe has no companion, whatever the old one had.
    `adapted`: the provenance of `model` when it is an adapted model (indexer.embed.adapted) just saved in the
    folder; it reads text as the index's model does (same length and prefixes). Adapted models the new
    recipe does not use are removed from the folder after the commit.
    `projection`: a learned map (indexer.embed.projection) just saved in the folder's models/, applied to the
    new recipe's layer and pooling; `adapted` is then its provenance. Without it the new recipe has no map.
    """
    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        db.execute("BEGIN")
        old = read_manifest(db, folder)
        documents = stored_documents(db)
        db.execute("COMMIT")
    finally:
        db.close()
    _check_generation(old.generation, expected_generation, folder)
    recipe = old.recipe
    same = model is None or model == recipe.model
    reads = same or adapted is not None  # an adapted model reads as the model it was trained from
    resolved = resolve_recipe(recipe.model if same else model, layer=layer, pooling=pooling,
                              exclude_special=recipe.exclude_special, max_length=recipe.max_length if reads else None,
                              threads=threads, prefixes=(recipe.query_prefix, recipe.passage_prefix) if reads else None)
    if same and resolved.recipe.model_checksum != recipe.model_checksum:
        raise BertdexError(f"model {recipe.model!r} is no longer the one this index was built with: rebuild it with `bertdex index --replace`")
    settings = old.settings if search is None else replace(old.settings, search=search)
    if companion is not None:
        if projection:
            raise BertdexError("a learned map is not supported on an index with a companion model")
        resolved = with_companion(resolved, companion, share, threads=threads)
    if projection:
        resolved.encoder.projection = (layer, pooling, load_map(projection))
        resolved = Resolved(replace(resolved.recipe, projection=projection), resolved.encoder, resolved.reason)
    if resolved.recipe.describe() != recipe.describe():
        settings = replace(settings, model_reason=f"tune: {resolved.recipe.describe()} answered the held-out questions "
                                                  f"better than {recipe.describe()}")
    provenance = adapted if adapted is not None else (settings.adapted if same and not recipe.projection else None)
    settings = replace(settings, adapted=provenance if is_adapted(resolved.recipe.model) or projection else None)
    new = replace(old, recipe=resolved.recipe, settings=settings)
    stream = streams(new.index_type, len(documents), resolved.recipe.dimension)  # compressed: vectors to disk
    with IndexWriter.open(folder, new=new, replace=True, stream=stream) as writer:
        _check_generation(read_manifest(writer.db, folder).generation, old.generation, folder)
        ensure_sample(writer, resolved.encoder, [d["text"] for d in documents])  # the collection's cut, by the new recipe
        rewrite_documents(writer, resolved.encoder, documents)
        committed = writer.commit()
    remove_unused(folder, {resolved.recipe.model, resolved.recipe.projection})
    return committed


def rewrite_documents(writer: IndexWriter, encoder, documents: list[dict]) -> None:
    """Embed `documents` (dicts of key, text, fields, group) by the writer's recipe and settings, in chunks."""
    recipe, settings = writer.manifest.recipe, writer.manifest.settings
    for start in range(0, len(documents), CHUNK):
        part = documents[start : start + CHUNK]
        embedded = embed_entries(encoder, recipe, settings, [d["text"] for d in part])
        writer.note_encoder(encoder.path.label())
        writer.write_documents(part, embedded.of(recipe.layer, recipe.pooling), embedded.owners, embedded.spans)


def stored_documents(db) -> list[dict]:
    """Every entry of an index as the writer takes them, in id order (call inside a read transaction)."""
    rows = db.execute("SELECT key, text, fields, group_key FROM documents ORDER BY id").fetchall()
    return [{"key": key, "text": text, "fields": json.loads(fields or "{}"), "group": group}
            for key, text, fields, group in rows]


def _check_generation(found: int, expected: int | None, folder: Path) -> None:
    if expected is not None and found != expected:
        raise BertdexError(f"{folder} changed while this command ran (commit {expected} -> {found}): nothing was written; run it again")

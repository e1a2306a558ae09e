"""`bertdex repair`: rebuild an index's FAISS files from the texts its SQLite file holds, in one commit.

When only some segment files are damaged (indexer.store.segments), only the entries whose vectors
they held are embedded again, into a new segment, and the damaged files leave the manifest;
otherwise every entry is embedded again into one new file.

The entries are embedded again with the recipe the manifest records (same model, layer, pooling,
windows), so a missing, truncated or altered vector file, or vectors that no longer match their
texts, become a fresh generation that `verify` passes. It cannot repair a damaged SQLite file
(that holds the texts): rebuild from the source then. It does not restore an older generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import BertdexError, IndexDamaged
from indexer.store import integrity, segments, streamed
from indexer.store.folder import DB_NAME, IndexWriter, check_index_folder, connect, read_manifest
from indexer.store.verify import verify_index


@dataclass(frozen=True)
class RepairReport:
    folder: str
    found: list[str] = field(default_factory=list)  # what verify reported before the repair
    documents: int = 0
    vectors: int = 0
    generation: int = 0
    segments: list[str] = field(default_factory=list)  # the damaged segment files rebuilt; empty: the whole index
    reembedded: int = 0  # entries embedded again

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def repair_index(folder: str | Path, *, encoder=None, threads: int | None = None) -> RepairReport:
    """Re-embed every stored entry by the recorded recipe into a new generation; `encoder`: one already loaded."""
    from indexer.embed.projection import follows_map
    from indexer.embed.resolve import encoder_for
    from indexer.ingest.reembed import rewrite_documents, stored_documents

    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        db.execute("BEGIN")
        old = read_manifest(db, folder)
        integrity = db.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            raise IndexDamaged(f"{folder / DB_NAME} is damaged ({integrity}); repair rebuilds vectors from the texts it "
                               "holds: rebuild the index from its source with `bertdex index --replace`")
        documents = stored_documents(db)
        db.execute("COMMIT")
    finally:
        db.close()
    found = verify_index(folder).problems
    encoder = encoder if encoder is not None and follows_map(encoder, old.recipe) else encoder_for(old.recipe, threads=threads)
    damaged = _damaged_segments(folder, old)
    if damaged and found and all(any(name in problem for name in damaged) for problem in found):
        return _repair_segments(folder, old, damaged, found, encoder)
    stream = streamed.streams(old.index_type, len(documents), old.recipe.dimension)  # compressed: vectors to disk
    with IndexWriter.open(folder, new=old, replace=True, stream=stream) as writer:
        if read_manifest(writer.db, folder).generation != old.generation:
            raise BertdexError(f"{folder} changed while repair read it: nothing was written; run it again")
        rewrite_documents(writer, encoder, documents)
        final = writer.commit()
    return RepairReport(str(folder), found, final.documents, final.vectors, final.generation)


def _damaged_segments(folder: Path, manifest) -> list[str]:
    """The segment files that fail their checks (checksum included), when some others pass; else []."""
    records = segments.records_of(manifest)
    damaged = []
    for record in records:
        checked = {name: record[name] for name in ("bytes", "blake2b", "ntotal") if name in record}
        try:
            integrity.read_faiss(folder / record["file"], checked, manifest.recipe.dimension, checksum=True)
        except IndexDamaged:
            damaged.append(record["file"])
    return damaged if len(damaged) < len(records) and all(r.get("last_id") is not None for r in records) else []


def _repair_segments(folder: Path, old, damaged: list[str], found: list[str], encoder) -> RepairReport:
    """Embed again only the entries whose vectors a damaged segment held; the commit leaves those files out."""
    from indexer.ingest.reembed import rewrite_documents

    ranges = [(r["first_id"], r["last_id"]) for r in segments.records_of(old) if r["file"] in damaged]
    with IndexWriter.open(folder, dropping=frozenset(damaged)) as writer:
        if writer.manifest.generation != old.generation:
            raise BertdexError(f"{folder} changed while repair read it: nothing was written; run it again")
        where = " OR ".join("p.id BETWEEN ? AND ?" for _ in ranges)
        rows = writer.db.execute(f"SELECT DISTINCT d.key, d.text, d.fields, d.group_key FROM documents d JOIN passages p "
                                 f"ON p.document_id = d.id WHERE {where} ORDER BY d.id",
                                 [bound for pair in ranges for bound in pair]).fetchall()
        documents = [{"key": key, "text": text, "fields": json.loads(fields or "{}"), "group": group}
                     for key, text, fields, group in rows]
        rewrite_documents(writer, encoder, documents)
        writer._changed = True  # the damaged files leave even when they held no live entry
        final = writer.commit()
    return RepairReport(str(folder), found, final.documents, final.vectors, final.generation, damaged, len(documents))

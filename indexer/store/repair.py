"""`bertdex repair`: rebuild an index's FAISS file from the texts its SQLite file holds, in one commit.

The entries are embedded again with the recipe the manifest records (same model, layer, pooling,
windows), so a missing, truncated or altered vector file, or vectors that no longer match their
texts, become a fresh generation that `verify` passes. It cannot repair a damaged SQLite file
(that holds the texts): rebuild from the source then. It does not restore an older generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import BertdexError, IndexDamaged
from indexer.store.folder import DB_NAME, IndexWriter, check_index_folder, connect, read_manifest
from indexer.store.verify import verify_index


@dataclass(frozen=True)
class RepairReport:
    folder: str
    found: list[str] = field(default_factory=list)  # what verify reported before the repair
    documents: int = 0
    vectors: int = 0
    generation: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def repair_index(folder: str | Path, *, encoder=None, threads: int | None = None) -> RepairReport:
    """Re-embed every stored entry by the recorded recipe into a new generation; `encoder`: one already loaded."""
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
    encoder = encoder or encoder_for(old.recipe, threads=threads)
    with IndexWriter.open(folder, new=old, replace=True) as writer:
        if read_manifest(writer.db, folder).generation != old.generation:
            raise BertdexError(f"{folder} changed while repair read it: nothing was written; run it again")
        rewrite_documents(writer, encoder, documents)
        final = writer.commit()
    return RepairReport(str(folder), found, final.documents, final.vectors, final.generation)

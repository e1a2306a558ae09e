"""`bertdex verify`: check that the FAISS file, the documents, the passages and FTS5 agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.store.ann import TOMBSTONE
from indexer.errors import BertdexError
from indexer.store.folder import check_index_folder, connect, load_vectors, read_manifest


@dataclass(frozen=True)
class VerifyReport:
    documents: int
    vectors: int
    generation: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "documents": self.documents, "vectors": self.vectors,
                "generation": self.generation, "problems": self.problems}

    def lines(self) -> list[str]:
        head = f"{'ok' if self.ok else 'BROKEN'}: {self.documents} entries, {self.vectors} vectors, generation {self.generation}"
        return [head] + [f"problem: {p}" for p in self.problems]


def verify_index(folder: str | Path) -> VerifyReport:
    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        db.execute("BEGIN")
        manifest = read_manifest(db, folder)
        problems = []
        integrity = db.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"SQLite integrity: {integrity}")
        try:
            vectors = load_vectors(folder, manifest.generation, manifest.recipe.dimension)
        except (RuntimeError, OSError) as error:
            raise BertdexError(f"{folder}: the FAISS file of generation {manifest.generation} cannot be read: {error}") from None
        documents = db.execute("SELECT count(*) FROM documents").fetchone()[0]
        passage_ids = np.asarray([r[0] for r in db.execute("SELECT id FROM passages ORDER BY id")], dtype=np.int64)
        faiss_ids = np.sort(_faiss_ids(vectors))
        if documents != manifest.documents:
            problems.append(f"manifest says {manifest.documents} entries, the table holds {documents}")
        if len(passage_ids) != len(faiss_ids):
            problems.append(f"{len(passage_ids)} passages but {len(faiss_ids)} FAISS vectors")
        elif not np.array_equal(passage_ids, faiss_ids):
            problems.append("FAISS ids differ from the passage ids")
        if vectors.d != manifest.recipe.dimension:
            problems.append(f"FAISS dimension {vectors.d} != recipe dimension {manifest.recipe.dimension}")
        orphans = db.execute("SELECT count(*) FROM passages WHERE document_id NOT IN (SELECT id FROM documents)").fetchone()[0]
        if orphans:
            problems.append(f"{orphans} passages belong to no entry")
        bare = db.execute("SELECT count(*) FROM documents WHERE id NOT IN (SELECT document_id FROM passages)").fetchone()[0]
        if bare:
            problems.append(f"{bare} entries have no vector")
        keywords = db.execute("SELECT count(*) FROM keywords").fetchone()[0]
        if keywords != documents:
            problems.append(f"{keywords} keyword rows for {documents} entries")
        return VerifyReport(documents, len(faiss_ids), manifest.generation, problems)
    finally:
        db.close()


def _faiss_ids(index) -> np.ndarray:
    import faiss

    if hasattr(index, "id_map"):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return ids[ids != TOMBSTONE]  # deleted from an HNSW graph that is not rebuilt yet
    return np.arange(index.ntotal, dtype=np.int64)

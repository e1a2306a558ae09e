"""`bertdex verify`: check that the FAISS file, the documents, the passages and FTS5 agree.

Checks: SQLite's quick_check; the manifest's counts; each segment's FAISS file (and the codebook's):
size, header and checksum as recorded at its commit; the segments' ids less the deleted ones against
the passages; per segment, every live vector of unit length (within 1e-3) and a sample of vectors
found first by themselves (or by an identical vector: shared boilerplate is no damage); and, with an
encoder, a sample of entries whose own stored vectors score as well as the best hit for their
re-embedded text (within TEXT_SCORE_MARGIN). A problem is one line naming what is wrong. It repairs
nothing (see repair).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.errors import IndexDamaged
from indexer.store import ann
from indexer.store.ann import TOMBSTONE
from indexer.store import integrity, segments
from indexer.store.folder import Manifest, check_index_folder, connect, open_vectors, read_manifest

NORM_TOLERANCE = 1e-3
SELF_FIND_SAMPLE = 50  # vectors searched for themselves (cheap: no model)
TEXT_SCORE_MARGIN = 0.02  # an entry found by its text scores within this of the best hit


@dataclass(frozen=True)
class VerifyReport:
    documents: int
    vectors: int
    generation: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "documents": self.documents, "vectors": self.vectors,
                "generation": self.generation, "problems": self.problems, "notes": self.notes}

    def lines(self) -> list[str]:
        head = f"{'ok' if self.ok else 'BROKEN'}: {self.documents} entries, {self.vectors} vectors, generation {self.generation}"
        return [head] + [f"problem: {p}" for p in self.problems] + [f"note: {n}" for n in self.notes]


def verify_index(folder: str | Path, *, text_sample: int = 0, encoder=None) -> VerifyReport:
    """Check the index at `folder`; with `text_sample`, also embed that many stored texts (with `encoder`,
    else one loaded for the recipe, when the other checks passed) and find their entries by them."""
    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        db.execute("BEGIN")
        manifest = read_manifest(db, folder)
        problems, notes = _sqlite_problems(db, manifest), []
        documents = db.execute("SELECT count(*) FROM documents").fetchone()[0]
        records = segments.records_of(manifest)
        if manifest.generation and any(not record.get("blake2b") for record in records):
            notes.append("no checksum recorded (written before checksums); the next commit records one")
        if manifest.codebook:
            try:
                integrity.check_faiss_file(folder / manifest.codebook["file"], manifest.codebook, checksum=True)
            except IndexDamaged as error:
                problems.append(str(error))
        try:
            vectors = open_vectors(folder, manifest, checksum=True)
        except IndexDamaged as error:
            return VerifyReport(documents, 0, manifest.generation, problems + [str(error)], notes)
        passage_ids = np.asarray([r[0] for r in db.execute("SELECT id FROM passages ORDER BY id")], dtype=np.int64)
        held = [_faiss_ids(segment.index) for segment in vectors.segments]
        everything = np.concatenate(held) if held else np.zeros(0, np.int64)
        deleted = np.asarray(manifest.deleted, dtype=np.int64)
        stray = np.setdiff1d(deleted, everything)
        if stray.size:
            problems.append(f"{stray.size} deleted ids are in no segment (e.g. {stray[0]})")
        faiss_ids = np.sort(everything[~np.isin(everything, deleted)])
        if len(passage_ids) != len(faiss_ids):
            problems.append(f"{len(passage_ids)} passages but {len(faiss_ids)} FAISS vectors")
        elif not np.array_equal(passage_ids, faiss_ids):
            problems.append("FAISS ids differ from the passage ids")
        for segment, record in zip(vectors.segments, records):
            if segment.index.ntotal and (segment.index.d == manifest.recipe.dimension):
                problems += _vector_problems(db, segment, record["file"])
        if text_sample and not problems and vectors.ntotal:
            encoder = encoder or _encoder(manifest, notes)
            if encoder is not None:
                problems += _text_problems(db, vectors, manifest, encoder, text_sample)
        return VerifyReport(documents, len(faiss_ids), manifest.generation, problems, notes)
    except sqlite3.DatabaseError as error:
        raise IndexDamaged(f"{folder / 'bertdex.db'} is damaged ({error}): rebuild the index from its source") from None
    finally:
        db.close()


def _sqlite_problems(db, manifest: Manifest) -> list[str]:
    problems = []
    integrity = db.execute("PRAGMA quick_check").fetchone()[0]
    if integrity != "ok":
        problems.append(f"SQLite integrity: {integrity}")
    documents, passages = db.execute(
        "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM passages)").fetchone()
    if documents != manifest.documents:
        problems.append(f"manifest says {manifest.documents} entries, the table holds {documents}")
    if passages != manifest.vectors:
        problems.append(f"manifest says {manifest.vectors} vectors, the table holds {passages} passages")
    orphans = db.execute("SELECT count(*) FROM passages WHERE document_id NOT IN (SELECT id FROM documents)").fetchone()[0]
    if orphans:
        problems.append(f"{orphans} passages belong to no entry")
    bare = db.execute("SELECT count(*) FROM documents WHERE id NOT IN (SELECT document_id FROM passages)").fetchone()[0]
    if bare:
        problems.append(f"{bare} entries have no vector")
    keywords = db.execute("SELECT count(*) FROM keywords").fetchone()[0]
    if keywords != documents:
        problems.append(f"{keywords} keyword rows for {documents} entries")
    return problems


def _vector_problems(db, segment, name: str) -> list[str]:
    """One segment's live vectors: unit norms, and a spread sample each found first (at score ~1) by itself."""
    vectors = segment.index
    ids, stored = ann.stored(vectors)
    if len(segment.deleted):
        keep = ~np.isin(ids, segment.deleted)
        ids, stored = ids[keep], stored[keep]
    if not len(ids):
        return []
    norms = np.linalg.norm(stored, axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1) <= NORM_TOLERANCE))  # NaN counts as bad
    if bad.size:
        worst = int(bad[np.argmax(np.nan_to_num(np.abs(norms[bad] - 1), nan=np.inf))])
        return [f"{name}: {bad.size} vectors are not of unit length (passage {ids[worst]} of entry "
                f"{_key_of(db, int(ids[worst]))!r}: norm {norms[worst]:.4g})"]
    picks = np.unique(np.linspace(0, len(ids) - 1, min(SELF_FIND_SAMPLE, len(ids))).astype(int))
    scores, found = ann.search(vectors, stored[picks], min(10, vectors.ntotal))
    # found by itself: it, or a vector as close as it is to itself (an identical one: a shared
    # boilerplate window), ranks first; the ten best need not hold it when more than ten are identical
    own = np.einsum("ij,ij->i", stored[picks], stored[picks])
    lost = [int(ids[p]) for p, row_ids, row, self_score in zip(picks, found, scores, own)
            if ids[p] not in row_ids[row >= row[0] - 1e-3] and not row[0] >= self_score - 1e-3]
    # exact search finds every vector; a graph (HNSW) may leave a rare node unreachable: allow a tenth
    if len(lost) > (0 if ann.kind(vectors) == "flat" else len(picks) // 10):
        return [f"{name}: {len(lost)} of {len(picks)} sampled vectors are not found by themselves "
                f"(e.g. entry {_key_of(db, lost[0])!r})"]
    return []


def _text_problems(db, vectors, manifest: Manifest, encoder, sample: int) -> list[str]:
    """A spread sample of entries embedded again from their stored text must find themselves first."""
    recipe, settings = manifest.recipe, manifest.settings
    rows = db.execute("SELECT id, key, text FROM documents ORDER BY id").fetchall()
    rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, min(sample, len(rows))).astype(int))]
    from indexer.ingest.embedding import embed_entries  # the windows and prefix every writer uses

    embedded = embed_entries(encoder, recipe, settings, [text for _, _, text in rows])
    questions = embedded.of(recipe.layer, recipe.pooling)
    scores, found = ann.search(vectors, questions, min(10, vectors.ntotal))
    owners = dict(db.execute("SELECT id, document_id FROM passages").fetchall())
    passages_of: dict[int, list[int]] = {}
    for passage, document in owners.items():
        passages_of.setdefault(document, []).append(passage)
    missed = set()
    for owner, question, row in zip(embedded.owners, questions, scores):
        # each window of the entry must find one of the entry's own stored vectors within the margin of the
        # best hit: the best may be another entry's identical window (shared boilerplate, ties that fill the
        # top ten), but a window whose own vector was damaged or swapped scores well below it
        own = ann.vectors_of(vectors, np.asarray(passages_of.get(rows[owner][0], []), dtype=np.int64))
        if not (own.size and float(np.max(own @ question)) >= row[0] - TEXT_SCORE_MARGIN):
            missed.add(int(owner))
    if missed:
        first = rows[min(missed)]
        return [f"{len(missed)} of {len(rows)} sampled entries are not found by their own text "
                f"(e.g. {first[1]!r}): the vectors do not match the texts (run `bertdex repair`)"]
    return []


def _encoder(manifest: Manifest, notes: list[str]):
    from indexer.embed.resolve import encoder_for
    from indexer.errors import BertdexError

    try:
        return encoder_for(manifest.recipe)
    except BertdexError as error:
        notes.append(f"texts not checked: {error}")
        return None


def _key_of(db, passage: int) -> str:
    row = db.execute("SELECT d.key FROM passages p JOIN documents d ON d.id = p.document_id WHERE p.id = ?",
                     [passage]).fetchone()
    return row[0] if row else f"passage {passage}"


def _faiss_ids(index) -> np.ndarray:
    import faiss

    if hasattr(index, "id_map"):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return ids[ids != TOMBSTONE]  # deleted from an HNSW graph that is not rebuilt yet
    return np.arange(index.ntotal, dtype=np.int64)

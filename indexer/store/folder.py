"""The index folder: a SQLite file (texts, keywords, manifest) and FAISS files, changed all-or-nothing.

Layout of DIR:
    bertdex.db           documents, passages (one row per vector; passage id = FAISS id),
                         keywords (FTS5), manifest; WAL mode so readers never wait for a writer
    vectors.<G>.faiss    a segment of the vectors, written by the commit of generation G; the manifest
                         names the committed ones (indexer.store.segments)
    codes.<G>.faiss      compressed types: the empty trained index new segments are coded with
    write.lock           held (flock) by the one writer, holding its pid

A commit writes its new file (the whole index for a build, a rebuild or a repair; else the write's new
segment, or none for a delete) beside the committed ones (fsync, rename), then commits SQLite with
generation G+1 and the manifest's list of files with their sizes, checksums and counts
(indexer.store.integrity checks them) and the deletion set; only then are files no longer named removed.
A crash at any instant leaves SQLite naming complete FAISS files of the same commit. A merge of
segments is one more such commit. A writer refuses to commit on top of a damaged index. Each commit
also re-makes the collection's "no good answer" cut (indexer.store.offtopic) unless a calibrated one
stands (a write to an index over CHECKSUM_AT_WRITE keeps it: re-making it would read every vector;
a rebuild or `bertdex compact` makes it again). This module stores; it does not read input or embed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import faiss
import numpy as np

from indexer.errors import BertdexError, IndexLocked, IndexMissing, IndexReadOnly
from indexer.store import integrity, segments, streamed
from indexer.store.offtopic import with_collection_cut
from indexer.store.keywords import fts_document, scheme_of
from indexer.store.manifest import (  # noqa: F401 (re-exported: the names callers import from here)
    DB_NAME, FORMAT_VERSION, Manifest, check_counts, check_index_folder, connect, content_hash, load_vectors,
    new_vector_index, schema, now, open_manifest, open_vectors, read_manifest, vectors_path,
)

if TYPE_CHECKING:
    import sqlite_utils

LOCK_NAME = "write.lock"
# A write checks the checksums of the segment files up to this size (a 10k-vector flat file: 15 MB, ~20 ms);
# larger ones get the cheap checks only (size, header), so a write to a 1M index does not read 1.5 GB.
# `bertdex verify` checks every checksum; a merge checks those of the files it folds.
CHECKSUM_AT_WRITE = 64 << 20
_GENERATION_FILE = re.compile(r"^(vectors|codes)\.(\d+)\.(faiss|partial|spool)$")



class IndexWriter:
    """The one writer of an index folder: all its changes land in one commit, or none do.

    with IndexWriter.open(folder, manifest_for_new) as writer:
        writer.upsert(...); writer.delete(...)
        writer.commit()          # without it, nothing is kept
    """

    def __init__(self, folder: Path, db: sqlite_utils.Database, manifest: Manifest, lock_handle, replace: bool,
                 dropping: frozenset = frozenset(), stream: bool = False):
        self.folder, self.db, self.manifest, self._lock = folder, db, manifest, lock_handle
        self._dropping = dropping  # damaged segment files a repair replaces: unchecked, left out at commit
        self._removed: list[np.ndarray] = []  # passage ids to drop; applied at commit
        self.warnings: list[str] = []  # what the writer chose not to do (e.g. leave files it could not prove stale)
        self._encoded_with = set(manifest.encoded_with)
        # a build or a rebuild writes the whole index at each commit; a write to an index that has vectors
        # adds a segment (indexer.store.segments), so it costs what it adds
        self.whole = replace or manifest.generation == 0
        # a build of a compressed type keeps its float32 vectors on disk (`_write_streamed`): each checkpoint
        # commits them as a flat segment, the last commit codes them all into one segment of the type
        self.streamed, self._spool, self._replacing = stream, None, replace
        if replace:  # everything is rewritten: a damaged old generation is what a rebuild or repair replaces
            self._clear()
        else:  # never commit on top of a damaged index: counts, each segment's size and header, small ones' checksums
            check_counts(db, folder, manifest)
            for record in segments.records_of(manifest):
                if record["file"] in dropping:
                    continue
                integrity.check_faiss_file(folder / record["file"], record.get("blake2b") and record,
                                           checksum=record.get("bytes", 0) <= CHECKSUM_AT_WRITE)
            self.vectors = new_vector_index("flat", manifest.recipe.dimension, {})
        row = db.execute("SELECT max(id) FROM passages").fetchone()
        last = [r["last_id"] for r in segments.records_of(manifest) if r.get("last_id") is not None] if not replace else []
        self._next_passage = max([row[0] or 0, *last]) + 1  # a deleted id still in a segment is never given again
        self._first_new = self._next_passage  # ids from here on are this writer's (its new segment)
        self.committed = False
        self._opened = None if replace else manifest  # a write that leaves this manifest and the tables as they are commits nothing
        self._changed = replace
        self.commits = 0  # generations this writer committed (0: nothing changed, nothing was written)

    @classmethod
    @contextmanager
    def open(cls, folder: Path, *, new: Manifest | None = None, replace: bool = False, dropping: frozenset = frozenset(),
             stream: bool = False):
        """Lock `folder` and start a transaction. `new`: create the index if it has none yet. `dropping`:
        segment files (damaged) that this write replaces: their entries must be written again (repair).
        `stream`: a build (or the resumed load of one) of a compressed type: float32 vectors go to disk."""
        folder = Path(folder)
        lock_handle = _take_lock(folder, create=new is not None)
        db = None
        try:
            db = connect(folder)
            has_manifest = "manifest" in db.table_names() and db["manifest"].count > 0
            if not has_manifest and new is None:
                raise IndexMissing(f"{folder} is not a bertdex index: build it first with `bertdex index`")
            stale_warnings = _remove_stale_files(folder, db)
            with db.atomic():
                schema().apply(db)  # a new index gets every table; an older one gets what it lacks
                # take SQLite's write lock now, not at the first write after embedding: feedback and the query
                # log (indexer.store.feedback) write to this file too, and a commit of theirs in between would
                # make this transaction's snapshot stale (SQLITE_BUSY_SNAPSHOT) and fail the whole write
                db.execute(f"DELETE FROM {schema().migrations_table} WHERE 0")
                if not has_manifest:
                    manifest = new
                else:
                    manifest = read_manifest(db, folder)
                    if new is not None and not replace and new.recipe != manifest.recipe:
                        diff = "; ".join(manifest.recipe.differences(new.recipe))
                        raise BertdexError(f"{folder} was built with another recipe ({diff}): use --replace to rebuild it")
                    if replace and new is not None:
                        # generations only grow: a rebuild numbered from 0 would overwrite the committed
                        # file (vectors.1.faiss) before its commit, and a crash then would pair the old
                        # texts with the new vectors
                        manifest = Manifest(**{**new.__dict__, "generation": manifest.generation})
                writer = cls(folder, db, manifest, lock_handle, replace, frozenset(dropping), stream)
                writer.warnings += stale_warnings
                yield writer
                if not writer.committed:
                    raise _Abandon()
        except _Abandon:
            pass
        finally:
            if db is not None:
                db.close()
            lock_handle.close()

    # -- planning -------------------------------------------------------------------------------

    def existing(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        """key -> (document id, content hash) for the keys already indexed."""
        found = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(f"SELECT key, id, content_hash FROM documents WHERE key IN ({marks})", part):
                found[row[0]] = (row[1], row[2])
        return found

    # -- changes --------------------------------------------------------------------------------

    def write_documents(self, documents: list[dict], vectors: np.ndarray, owners: np.ndarray, spans: np.ndarray) -> None:
        """Insert or replace documents (dicts of key, text, fields, group) and their vectors.

        vectors[i] belongs to documents[owners[i]], covering characters spans[i] of its text.
        """
        old = self.existing([d["key"] for d in documents])
        self._drop_passages([old[d["key"]][0] for d in documents if d["key"] in old])
        document_ids, scheme = [], scheme_of(self.manifest.settings)
        for doc in documents:
            row = {
                "key": doc["key"], "text": doc["text"], "group_key": doc.get("group"),
                "fields": json.dumps(doc.get("fields") or {}, ensure_ascii=False),
                "content_hash": content_hash(doc["text"], doc.get("fields") or {}, doc.get("group")),
            }
            if doc["key"] in old:
                row["id"] = old[doc["key"]][0]
                self.db["documents"].update(row["id"], row)
                self.db.execute("DELETE FROM keywords WHERE rowid = ?", [row["id"]])
            else:
                row["id"] = self.db["documents"].insert(row).last_pk
            self.db.execute("INSERT INTO keywords(rowid, terms) VALUES (?, ?)",
                            [row["id"], fts_document(doc["text"], scheme)])
            document_ids.append(row["id"])
        ids = np.arange(self._next_passage, self._next_passage + len(vectors), dtype=np.int64)
        self._next_passage += len(vectors)
        self.db["passages"].insert_all(
            {"id": int(pid), "document_id": document_ids[owner], "start": int(span[0]), "end": int(span[1])}
            for pid, owner, span in zip(ids, owners, spans)
        )
        self._changed = self._changed or bool(documents)
        if len(vectors):
            self.vectors.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            if self.streamed and self.vectors.ntotal >= streamed.SPOOL_VECTORS:
                self._spill()

    def _spill(self) -> None:
        """A streamed build: the vectors in memory go to the end of this commit's spool file (a flat segment
        file in the making, vectors.<G>.spool: a crash leaves it unnamed, and the next writer removes it)."""
        from indexer.store import ann

        if self._spool is None:
            name = f"vectors.{self.manifest.generation + 1}.spool"
            self._spool = streamed.FlatSpool(self.folder / name, self.manifest.recipe.dimension)
        ids, vectors = ann.stored(self.vectors)
        self._spool.add(vectors, ids)
        self.vectors = self._empty_flat()

    def delete(self, keys: list[str]) -> list[str]:
        """Remove documents by key; returns the keys that were not there."""
        found = self.existing(keys)
        document_ids = [found[key][0] for key in keys if key in found]
        self._changed = self._changed or bool(document_ids)
        self._drop_passages(document_ids)
        for start in range(0, len(document_ids), 500):
            part = document_ids[start : start + 500]
            marks = ",".join("?" * len(part))
            self.db.execute(f"DELETE FROM documents WHERE id IN ({marks})", part)
            self.db.execute(f"DELETE FROM keywords WHERE rowid IN ({marks})", part)
        return [key for key in keys if key not in found]

    def _drop_passages(self, document_ids: list[int]) -> None:
        for start in range(0, len(document_ids), 500):
            part = document_ids[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT id FROM passages WHERE document_id IN ({marks})", part).fetchall()
            if rows:
                self._removed.append(np.asarray([r[0] for r in rows], dtype=np.int64))
                self.db.execute(f"DELETE FROM passages WHERE document_id IN ({marks})", part)

    def note_encoder(self, label: str) -> None:
        """Record the path (e.g. 'onnx fp32 (cpu)') that made vectors written in this commit."""
        self._encoded_with.add(label)

    def _clear(self) -> None:
        self._encoded_with = set()
        for table in ("passages", "documents", "keywords"):
            self.db.execute(f"DELETE FROM {table}")
        recipe = self.manifest.recipe
        self.vectors = new_vector_index(self.manifest.index_type, recipe.dimension, self.manifest.index_params)

    def set_manifest(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def commit(self) -> Manifest:
        """Write the next generation's FAISS file (the whole index, or the new segment), then commit SQLite
        pointing at it; a write to an index with segments then merges the newest ones if the policy says so.

        A write that changed nothing (every entry unchanged, only absent keys deleted) commits nothing:
        the generation stays, no file is written, and `commits` does not count it."""
        if not self._changed and self.manifest == self._opened:
            self.committed = True
            return self.manifest
        removed = np.concatenate(self._removed) if self._removed else np.zeros(0, dtype=np.int64)
        self._removed = []
        generation = self.manifest.generation + 1
        if self.streamed:
            records, deleted, codebook = self._write_streamed(removed, generation)
        elif self.whole:
            records, deleted, codebook = self._write_whole(removed, generation)
        else:
            records, deleted, codebook = self._write_segment(removed, generation)
            self._remake_cut(records, deleted)
        self._commit_manifest(generation, records, deleted, codebook)
        if self.streamed:
            self.vectors, self._first_new, self._replacing = self._empty_flat(), self._next_passage, False
        elif not self.whole:  # a build keeps its one index for its next checkpoint; a write starts a new segment
            self.vectors = new_vector_index("flat", self.manifest.recipe.dimension, {})
            self._first_new = self._next_passage
            plan = segments.plan_merge([segments.live(r, np.asarray(deleted, np.int64)) for r in records])
            if plan is not None:
                self.merge(plan)
        return self.manifest

    def _write_whole(self, removed: np.ndarray, generation: int) -> tuple[list[dict], tuple, dict]:
        from indexer.store import ann

        self.vectors, index_type, index_params = ann.finish(self.vectors, self.manifest.index_type,
                                                            self.manifest.index_params, removed)
        settings = self.manifest.settings
        search = with_collection_cut(settings.search, self.db, self.vectors, self.manifest.recipe)
        self.manifest = Manifest(**{**self.manifest.__dict__, "index_type": index_type, "index_params": index_params,
                                    "settings": replace(settings, search=search)})
        codebook = {}
        if self.vectors.ntotal and (empty := segments.codebook_of(self.vectors)) is not None:
            codebook = {"file": f"codes.{generation}.faiss", **_write_faiss_file(empty, self.folder / f"codes.{generation}.faiss")}
        return self._records_with(self.vectors, [], generation, index_params.get("tombstones", 0)), (), codebook

    def _empty_flat(self) -> faiss.Index:
        return new_vector_index("flat", self.manifest.recipe.dimension, {})

    def _write_streamed(self, removed: np.ndarray, generation: int) -> tuple[list[dict], tuple, dict]:
        """A streamed build's commit. At a checkpoint (a load still `loading`): its vectors (spool and memory)
        as one more flat segment, nothing merged. At the last commit: every segment's live vectors coded into
        one segment of the index's type, read from the files chunk by chunk (indexer.store.streamed); when the
        type chosen for the count is not compressed (auto, below its line), built in memory as a build is."""
        held = np.isin(removed, faiss.vector_to_array(self.vectors.id_map))
        if held.any():  # written and replaced within this commit: never in a file
            self.vectors.remove_ids(removed[held])
        records = [] if self._replacing else segments.records_of(self.manifest)
        deleted = set() if self._replacing else set(self.manifest.deleted)
        deleted |= {int(i) for i in removed[~held]}  # in a committed file or in the spool
        if self.vectors.ntotal:
            self._spill()
        spool, self._spool = self._spool, None
        if self.manifest.settings.loading is not None:  # a checkpoint
            if spool is not None:
                records = records + [self._commit_spool(spool, generation)]
            deleted = tuple(sorted(deleted))
            self._remake_cut(records, deleted)
            return records, deleted, {}
        paths = [self.folder / r["file"] for r in records] + ([spool.path] if spool else [])
        if spool is not None:
            spool.close()
        return self._write_folded(streamed.Sources(paths, np.asarray(sorted(deleted), np.int64)), generation)

    def _commit_spool(self, spool: streamed.FlatSpool, generation: int) -> dict:
        """The spool file, closed, as this commit's segment vectors.<generation>.faiss."""
        ids = spool.close()
        path = self.folder / f"vectors.{generation}.faiss"
        record = _publish(spool.path, path, len(ids))
        return {"file": path.name, **record, "kind": "flat", "first_id": int(ids.min()), "last_id": int(ids.max())}

    def _write_folded(self, sources: streamed.Sources, generation: int,
                      current: str = "flat") -> tuple[list[dict], tuple, dict]:
        """One segment of the index's type from `sources` (every live vector of the index), as the only one."""
        from indexer.store import ann
        from indexer.store import ann_compressed as compressed

        requested = ann.requested_type(self.manifest.index_type, self.manifest.index_params)
        dimension = self.manifest.recipe.dimension
        target = ann.choose(requested, sources.count, current, dimension, compressed.machine_memory())
        if target not in compressed.COMPRESSED or not sources.count:
            vectors = self._empty_flat()
            for part_ids, part in sources.chunks():
                vectors.add_with_ids(part, part_ids)
            self.vectors = vectors
            return self._write_whole(np.zeros(0, np.int64), generation)
        name, partial = f"vectors.{generation}.faiss", self.folder / f"vectors.{generation}.partial"
        try:
            index, params, empty = streamed.write_compressed(partial, sources, target, {"requested": requested})
        except BaseException as error:
            _leave_nothing(error, self.folder, partial)
        record = {"file": name, **_publish(partial, self.folder / name, index.ntotal), "kind": target}
        ids = faiss.vector_to_array(index.id_map)
        record.update(first_id=int(ids.min()), last_id=int(ids.max()))
        codebook = {"file": f"codes.{generation}.faiss", **_write_faiss_file(empty, self.folder / f"codes.{generation}.faiss")}
        settings = self.manifest.settings
        search = with_collection_cut(settings.search, self.db, index, self.manifest.recipe)
        self.manifest = Manifest(**{**self.manifest.__dict__, "index_type": target, "index_params": params,
                                    "settings": replace(settings, search=search)})
        return [record], (), codebook

    def _write_segment(self, removed: np.ndarray, generation: int) -> tuple[list[dict], tuple, dict]:
        fresh = removed[removed >= self._first_new]
        if fresh.size:  # written and replaced within this writer: never in a file
            self.vectors.remove_ids(fresh)
        deleted = tuple(sorted({*self.manifest.deleted, *map(int, removed[removed < self._first_new])}))
        records = segments.records_of(self.manifest)
        if records and records[0].get("last_id") is None:  # a format-1 file: its ids are all below this writer's
            records[0]["last_id"] = self._first_new - 1
        for record in [r for r in records if r["file"] in self._dropping]:  # every id it held is deleted now
            records.remove(record)
            deleted = tuple(i for i in deleted if not record["first_id"] <= i <= record["last_id"])
        self._dropping = frozenset()
        return self._records_with(self.vectors, records, generation, 0), deleted, self.manifest.codebook

    def _records_with(self, index: faiss.Index, records: list[dict], generation: int, tombstones: int) -> list[dict]:
        """`records` and, when `index` holds vectors, its file written as vectors.<generation>.faiss."""
        from indexer.store import ann

        if index.ntotal == 0:
            return records
        name = f"vectors.{generation}.faiss"
        ids = faiss.vector_to_array(index.id_map)
        live_ids = ids[ids >= 0]
        record = {"file": name, **_write_faiss_file(index, self.folder / name), "kind": ann.kind(index),
                  "first_id": int(live_ids.min()) if live_ids.size else 0, "last_id": int(ids.max())}
        return records + [{**record, "tombstones": tombstones} if tombstones else record]

    def _remake_cut(self, records: list[dict], deleted: tuple) -> None:
        """The collection's cut from the new generation's segments, when they are small enough to read."""
        if sum(r.get("bytes", 0) for r in records) > CHECKSUM_AT_WRITE:
            return
        upcoming = Manifest(**{**self.manifest.__dict__, "segments": tuple(records), "deleted": deleted, "faiss_file": {}})
        settings = self.manifest.settings
        search = with_collection_cut(settings.search, self.db, segments.open_segments(self.folder, upcoming),
                                     self.manifest.recipe)
        self.manifest = Manifest(**{**self.manifest.__dict__, "settings": replace(settings, search=search)})

    def _commit_manifest(self, generation: int, records: list[dict], deleted: tuple, codebook: dict) -> None:
        counts = self.db.execute("SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM passages)").fetchone()
        live = sum(segments.live(r, np.asarray(deleted, dtype=np.int64)) for r in records)
        if counts[1] != live:
            raise BertdexError(f"internal error: {counts[1]} passages but {live} vectors; nothing written")
        manifest = Manifest(**{**self.manifest.__dict__, "generation": generation, "documents": counts[0],
                               "vectors": counts[1], "updated": now(), "faiss_file": {},
                               "segments": tuple(records), "deleted": deleted, "codebook": codebook,
                               "format_version": FORMAT_VERSION,
                               "encoded_with": tuple(sorted(self._encoded_with)) if counts[1] else (),
                               "created": self.manifest.created or now()})
        written = segments.files_of(manifest) - segments.files_of(self.manifest)
        try:
            self.db["manifest"].upsert_all(manifest.to_rows(), pk="name")
            _commit_sqlite(self.db)
        except BaseException as error:  # the old generation stays the index: its files are still named
            for name in written:
                (self.folder / name).unlink(missing_ok=True)
            if isinstance(error, sqlite3.OperationalError) and integrity.no_space(self.folder, error):
                raise integrity.disk_full(self.folder) from None
            raise
        self.db.conn.execute("BEGIN")  # the atomic() block that opened us closes this empty one
        self.committed, self._changed, self.commits = True, False, self.commits + 1
        self.manifest = self._opened = manifest
        self.warnings += _remove_stale_files(self.folder, self.db)

    def merge(self, start: int = 0) -> Manifest:
        """Fold the segments from `start` to the newest into one, dropping their deleted vectors, in one
        commit (readers go on with the files they hold). start=0 (`bertdex compact`) rebuilds the whole
        index as its type, as a rebuild would, from the stored vectors and without the model."""
        records = segments.records_of(self.manifest)
        deleted = np.asarray(self.manifest.deleted, dtype=np.int64)
        folded = records[start:]
        if not folded:
            return self.manifest
        if self.whole or self._removed or self.vectors.ntotal:
            raise BertdexError("internal error: merge the segments before or after a write, not during it")
        generation = self.manifest.generation + 1
        if start == 0 and self._compacts_compressed(records, deleted):  # read from the files chunk by chunk
            for record in folded:  # never fold a damaged file
                integrity.check_faiss_file(self.folder / record["file"], record.get("blake2b") and record, checksum=True)
            sources = streamed.Sources([self.folder / r["file"] for r in folded], deleted)
            self._commit_manifest(generation, *self._write_folded(sources, generation, self.manifest.index_type))
            return self.manifest
        part = Manifest(**{**self.manifest.__dict__, "segments": tuple(folded)})
        ids, vectors = segments.open_segments(self.folder, part, checksum=True).stored()  # never fold a damaged file
        index, kind, params = segments.merged_index(vectors, ids, self.manifest, self._codebook(), whole=start == 0)
        del vectors
        codebook = self.manifest.codebook
        if start == 0:
            settings = self.manifest.settings
            search = with_collection_cut(settings.search, self.db, index, self.manifest.recipe)
            self.manifest = Manifest(**{**self.manifest.__dict__, "index_type": kind, "index_params": params,
                                        "settings": replace(settings, search=search)})
            empty = segments.codebook_of(index) if index.ntotal else None
            codebook = {} if empty is None else \
                {"file": f"codes.{generation}.faiss", **_write_faiss_file(empty, self.folder / f"codes.{generation}.faiss")}
        low, high = folded[0].get("first_id", 0), folded[-1].get("last_id")
        high = int(ids.max()) if high is None and len(ids) else (high if high is not None else low)
        merged = self._records_with(index, [], generation, params.get("tombstones", 0) if start == 0 else 0)
        if merged:  # the range of the folded files, so later deletions of ids they held land here
            merged[0]["first_id"], merged[0]["last_id"] = low, max(high, merged[0]["last_id"])
        left = tuple(int(i) for i in deleted if not low <= i <= high)
        self._commit_manifest(generation, records[:start] + merged, left, codebook)
        return self.manifest

    def _compacts_compressed(self, records: list[dict], deleted: np.ndarray) -> bool:
        """Does `bertdex compact` make an sq8 or ivfpq segment? Then it streams as a build of one does."""
        from indexer.store import ann
        from indexer.store import ann_compressed as compressed

        count = sum(segments.live(r, deleted) for r in records)
        requested = ann.requested_type(self.manifest.index_type, self.manifest.index_params)
        target = ann.choose(requested, count, self.manifest.index_type, self.manifest.recipe.dimension,
                            compressed.machine_memory())
        return target in compressed.COMPRESSED and count > 0

    def _codebook(self) -> faiss.Index | None:
        if not self.manifest.codebook:
            return None
        record = self.manifest.codebook
        return integrity.read_faiss(self.folder / record["file"], {k: v for k, v in record.items() if k != "file"},
                                    self.manifest.recipe.dimension, checksum=True)


def compact_index(folder: str | Path) -> dict:
    """`bertdex compact`: the whole index as one segment of its type, deleted vectors dropped, in one commit
    (IndexWriter.merge(0)); nothing is written when it already is one segment with nothing deleted."""
    with IndexWriter.open(Path(folder)) as writer:
        before = writer.manifest
        records = segments.records_of(before)
        if len(records) > 1 or before.deleted:
            writer.merge(0)
        after = writer.commit()  # commits nothing more
    kinds = [r.get("kind", after.index_type) for r in segments.records_of(after)]
    return {"folder": str(folder), "segments_before": len(records), "deleted_before": len(before.deleted),
            "generation_before": before.generation, "generation": after.generation, "vectors": after.vectors,
            "kind": kinds[0] if kinds else after.index_type}


class _Abandon(Exception):
    """Leaves the writer's transaction without committing."""


def _commit_sqlite(db: sqlite_utils.Database) -> None:
    """The commit point: before it the old generation is the index, after it the new one.
    A function of its own so the crash tests can stop a writer exactly here (tests/fault_writer.py)."""
    db.conn.execute("COMMIT")


def _write_faiss_file(index: faiss.Index, path: Path) -> dict:
    """Write `index` to `path` via a fsynced `.partial` file and a rename; returns its manifest record."""
    partial = path.with_suffix(".partial")
    try:
        faiss.write_index(index, str(partial))
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
    except BaseException as error:
        _leave_nothing(error, path.parent, partial, path)
    return _publish(partial, path, index.ntotal)


def _publish(written: Path, path: Path, count: int) -> dict:
    """The fsynced file `written` (a .partial or a spool) as `path`: its record, the rename, the folder fsynced.
    Returns the record; on any failure neither file is left behind."""
    try:
        record = integrity.faiss_record(written, count)
        os.replace(written, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        _leave_nothing(error, path.parent, written, path)
    return record


def _leave_nothing(error: BaseException, folder: Path, *paths: Path) -> NoReturn:
    """A failed file write: remove what it left (the old generation stands) and raise; a full disk as one line."""
    for path in paths:
        path.unlink(missing_ok=True)
    if isinstance(error, (OSError, RuntimeError)) and integrity.no_space(folder, error):
        raise integrity.disk_full(folder) from None
    raise error


def _fsync_folder(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_stale_files(folder: Path, db: sqlite_utils.Database) -> list[str]:
    """Delete vectors and codebook files the committed manifest does not name (left by crashes, old
    commits and merges).

    Only after a clean read of the committed manifest: on any error (a transient `database is
    locked`, an I/O error) every file stays, and the returned warning says so.
    """
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = dict(db.execute("SELECT name, value FROM manifest").fetchall()) if "manifest" in tables else {}
        named = segments.files_of(Manifest.from_rows(rows)) if "recipe" in rows else set()
        int(json.loads(rows.get("generation", "0")))
    except (sqlite3.Error, ValueError, TypeError, KeyError) as error:
        return [f"left the vectors files in {folder} in place: the committed generation could not be read ({error})"]
    for path in folder.iterdir():
        if _GENERATION_FILE.match(path.name) and path.name not in named:
            path.unlink(missing_ok=True)
    return []


def _take_lock(folder: Path, *, create: bool):
    if not folder.exists():
        if not create:
            raise IndexMissing(f"{folder} does not exist")
        try:
            folder.mkdir(parents=True)
        except OSError as error:
            raise IndexReadOnly(f"cannot create {folder}: {error.strerror}") from None
        _fsync_folder(folder.parent)  # the new folder's entry survives a power cut
    elif not folder.is_dir():
        raise IndexMissing(f"{folder} is not a folder")
    elif create and not (folder / DB_NAME).exists() and any(p.name != LOCK_NAME for p in folder.iterdir()):
        raise BertdexError(f"{folder} is not empty and is not a bertdex index: choose a new or empty folder")
    elif not create and not (folder / DB_NAME).exists():
        raise IndexMissing(f"{folder} is not a bertdex index (no {DB_NAME} in it)")
    if not os.access(folder, os.W_OK):
        raise IndexReadOnly(f"index {folder} is read-only")
    try:
        handle = open(folder / LOCK_NAME, "a+")
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise IndexReadOnly(f"index {folder} is read-only") from None
        raise
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise IndexLocked(f"index {folder} is locked by pid {holder} (another write is running); try again when it ends") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle

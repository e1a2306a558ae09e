"""The index folder: a SQLite file (texts, keywords, manifest) and a FAISS file, changed all-or-nothing.

Layout of DIR:
    bertdex.db           documents, passages (one row per vector; passage id = FAISS id),
                         keywords (FTS5), manifest; WAL mode so readers never wait for a writer
    vectors.<G>.faiss    the FAISS index of generation G, the one the manifest names
    write.lock           held (flock) by the one writer, holding its pid

Each commit also re-makes the collection's "no good answer" cut (indexer.store.offtopic) unless a
calibrated one stands. A commit writes vectors.<G+1>.faiss beside the old file, then commits SQLite with generation
G+1 and the new file's size, checksum and count (indexer.store.integrity checks them); only then is
the old file removed. A crash at any instant leaves SQLite naming a complete FAISS file of the same
commit. A writer refuses to commit on top of a damaged index. This module stores; it does not read
input or embed.
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

import faiss
import numpy as np
import sqlite_utils

from indexer.errors import BertdexError, IndexLocked, IndexMissing, IndexReadOnly
from indexer.store import integrity
from indexer.store.offtopic import with_collection_cut
from indexer.store.keywords import fts_document, scheme_of
from indexer.store.manifest import (  # noqa: F401 (re-exported: the names callers import from here)
    DB_NAME, FORMAT_VERSION, Manifest, check_counts, check_index_folder, connect, content_hash, load_vectors,
    migrations, new_vector_index, now, open_manifest, open_vectors, read_manifest, vectors_path,
)

LOCK_NAME = "write.lock"
_GENERATION_FILE = re.compile(r"^vectors\.(\d+)\.(faiss|partial)$")



class IndexWriter:
    """The one writer of an index folder: all its changes land in one commit, or none do.

    with IndexWriter.open(folder, manifest_for_new) as writer:
        writer.upsert(...); writer.delete(...)
        writer.commit()          # without it, nothing is kept
    """

    def __init__(self, folder: Path, db: sqlite_utils.Database, manifest: Manifest, lock_handle, replace: bool):
        self.folder, self.db, self.manifest, self._lock = folder, db, manifest, lock_handle
        self._removed: list[np.ndarray] = []  # FAISS ids to drop; applied at commit (HNSW/IVF rebuild once)
        self.warnings: list[str] = []  # what the writer chose not to do (e.g. leave files it could not prove stale)
        self._encoded_with = set(manifest.encoded_with)
        if replace:  # everything is rewritten: a damaged old generation is what a rebuild or repair replaces
            self._clear()
        else:  # never commit on top of a damaged index
            check_counts(db, folder, manifest)
            self.vectors = open_vectors(folder, manifest, checksum=True)
        row = db.execute("SELECT max(id) FROM passages").fetchone()
        self._next_passage = (row[0] or 0) + 1
        self.committed = False

    @classmethod
    @contextmanager
    def open(cls, folder: Path, *, new: Manifest | None = None, replace: bool = False):
        """Lock `folder` and start a transaction. `new`: create the index if it has none yet."""
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
                migrations.apply(db)  # a new index gets every table; an older one gets what it lacks
                # take SQLite's write lock now, not at the first write after embedding: feedback and the query
                # log (indexer.store.feedback) write to this file too, and a commit of theirs in between would
                # make this transaction's snapshot stale (SQLITE_BUSY_SNAPSHOT) and fail the whole write
                db.execute(f"DELETE FROM {migrations.migrations_table} WHERE 0")
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
                writer = cls(folder, db, manifest, lock_handle, replace)
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
        if len(vectors):
            self.vectors.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def delete(self, keys: list[str]) -> list[str]:
        """Remove documents by key; returns the keys that were not there."""
        found = self.existing(keys)
        document_ids = [found[key][0] for key in keys if key in found]
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
        """Write the FAISS file of the next generation, then commit SQLite pointing at it."""
        generation = self.manifest.generation + 1
        from indexer.store import ann

        removed = np.concatenate(self._removed) if self._removed else np.zeros(0, dtype=np.int64)
        self.vectors, index_type, index_params = ann.finish(self.vectors, self.manifest.index_type,
                                                            self.manifest.index_params, removed)
        self._removed = []
        settings = self.manifest.settings
        search = with_collection_cut(settings.search, self.db, self.vectors, self.manifest.recipe)
        self.manifest = Manifest(**{**self.manifest.__dict__, "index_type": index_type, "index_params": index_params,
                                    "settings": replace(settings, search=search)})
        counts = self.db.execute("SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM passages)").fetchone()
        if counts[1] != ann.live_count(self.vectors):
            raise BertdexError(f"internal error: {counts[1]} passages but {ann.live_count(self.vectors)} vectors; nothing written")
        path = vectors_path(self.folder, generation)
        record = _write_faiss_file(self.vectors, path)
        manifest = Manifest(**{**self.manifest.__dict__, "generation": generation, "documents": counts[0],
                               "vectors": counts[1], "updated": now(), "faiss_file": record,
                               "encoded_with": tuple(sorted(self._encoded_with)) if counts[1] else (),
                               "created": self.manifest.created or now()})
        try:
            self.db["manifest"].upsert_all(manifest.to_rows(), pk="name")
            _commit_sqlite(self.db)
        except BaseException as error:  # the old generation stays the index: its file is still named
            path.unlink(missing_ok=True)
            if isinstance(error, sqlite3.OperationalError) and integrity.no_space(self.folder, error):
                raise integrity.disk_full(self.folder) from None
            raise
        self.db.conn.execute("BEGIN")  # the atomic() block that opened us closes this empty one
        self.committed = True
        self.manifest = manifest
        self.warnings += _remove_stale_files(self.folder, self.db)
        return manifest


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
        record = integrity.faiss_record(partial, index.ntotal)
        os.replace(partial, path)
        _fsync_folder(path.parent)
    except BaseException as error:  # a full disk, most likely: leave nothing behind, the old generation stands
        partial.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)) and integrity.no_space(path.parent, error):
            raise integrity.disk_full(path.parent) from None
        raise
    return record


def _fsync_folder(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_stale_files(folder: Path, db: sqlite_utils.Database) -> list[str]:
    """Delete FAISS files of generations other than the committed one (left by crashes or old commits).

    Only after a clean read of the committed generation: on any error (a transient `database is
    locked`, an I/O error) every file stays, and the returned warning says so.
    """
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = db.execute("SELECT value FROM manifest WHERE name = 'generation'").fetchone() if "manifest" in tables else None
        current = None if row is None else int(json.loads(row[0]))
    except (sqlite3.Error, ValueError, TypeError) as error:
        return [f"left the vectors files in {folder} in place: the committed generation could not be read ({error})"]
    for path in folder.iterdir():
        found = _GENERATION_FILE.match(path.name)
        if found and not (found.group(2) == "faiss" and int(found.group(1)) == current):
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

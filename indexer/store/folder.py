"""The index folder: a SQLite file (texts, keywords, manifest) and a FAISS file, changed all-or-nothing.

Layout of DIR:
    bertdex.db           documents, passages (one row per vector; passage id = FAISS id),
                         keywords (FTS5), manifest; WAL mode so readers never wait for a writer
    vectors.<G>.faiss    the FAISS index of generation G, the one the manifest names
    write.lock           held (flock) by the one writer, holding its pid

A commit writes vectors.<G+1>.faiss beside the old file, then commits SQLite with generation
G+1; only then is the old file removed. A crash at any instant leaves SQLite naming a complete
FAISS file of the same commit. This module stores; it does not read input or embed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import sqlite_utils

from indexer.errors import BertdexError
from indexer.store.keywords import fts_document
from indexer.embed.recipe import Recipe

FORMAT_VERSION = 1
DB_NAME = "bertdex.db"
LOCK_NAME = "write.lock"

migrations = sqlite_utils.Migrations("bertdex")


@migrations()
def m001_create_tables(db: sqlite_utils.Database) -> None:
    db["documents"].create(
        {"id": int, "key": str, "text": str, "fields": str, "content_hash": str, "group_key": str},
        pk="id", not_null={"key", "text"},
    )
    db["documents"].create_index(["key"], unique=True)
    db["documents"].create_index(["group_key"])
    db["passages"].create(
        {"id": int, "document_id": int, "start": int, "end": int},
        pk="id", foreign_keys=[("document_id", "documents", "id")],
    )
    db["passages"].create_index(["document_id"])
    db["manifest"].create({"name": str, "value": str}, pk="name")
    db.execute("CREATE VIRTUAL TABLE keywords USING fts5(terms, tokenize='porter unicode61')")


@dataclass(frozen=True)
class Manifest:
    """What an index is: its recipe, how its entries were read, and its current commit."""

    recipe: Recipe
    index_type: str = "flat"
    index_params: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # text_fields, id_field, group_field, window, stride, tuned search
    generation: int = 0
    documents: int = 0
    vectors: int = 0
    created: str = ""
    updated: str = ""
    format_version: int = FORMAT_VERSION

    def to_rows(self) -> list[dict]:
        values = {
            "recipe": self.recipe.to_dict(), "index_type": self.index_type, "index_params": self.index_params,
            "settings": self.settings, "generation": self.generation, "documents": self.documents,
            "vectors": self.vectors, "created": self.created, "updated": self.updated,
            "format_version": self.format_version,
        }
        return [{"name": name, "value": json.dumps(value, ensure_ascii=False)} for name, value in values.items()]

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> "Manifest":
        values = {name: json.loads(value) for name, value in rows.items()}
        values["recipe"] = Recipe.from_dict(values["recipe"])
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def content_hash(text: str, fields: dict, group: str | None) -> str:
    payload = json.dumps([text, fields, group], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def connect(folder: Path, *, readonly: bool = False) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(Path(folder) / DB_NAME), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return sqlite_utils.Database(conn)


def read_manifest(db: sqlite_utils.Database, folder: Path) -> Manifest:
    if "manifest" not in db.table_names():
        raise BertdexError(f"{folder} is not a bertdex index (no manifest; was its first build interrupted?)")
    rows = {row["name"]: row["value"] for row in db["manifest"].rows}
    if "recipe" not in rows:
        raise BertdexError(f"{folder} is not a bertdex index (empty manifest; was its first build interrupted?)")
    version = json.loads(rows.get("format_version", "0"))
    if version != FORMAT_VERSION:
        raise BertdexError(f"{folder} has index format {version}; this bertdex reads format {FORMAT_VERSION}: rebuild it")
    return Manifest.from_rows(rows)


def vectors_path(folder: Path, generation: int) -> Path:
    return folder / f"vectors.{generation}.faiss"


def check_index_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not (folder / DB_NAME).is_file():
        raise BertdexError(f"{folder} is not a bertdex index (no {DB_NAME} in it)")
    return folder


def load_vectors(folder: Path, generation: int, dimension: int, flags: int = 0) -> faiss.Index:
    """The FAISS index of a generation; `flags` for faiss.read_index (a searcher maps compressed types)."""
    path = vectors_path(folder, generation)
    if generation == 0 and not path.exists():
        return new_vector_index("flat", dimension, {})
    return faiss.read_index(str(path), flags)


def new_vector_index(index_type: str, dimension: int, params: dict) -> faiss.Index:
    """An empty FAISS index with our ids (IndexIDMap2) over inner product on unit vectors (see indexer.store.ann)."""
    from indexer.store import ann

    return ann.new_index(index_type, dimension, params)


class IndexWriter:
    """The one writer of an index folder: all its changes land in one commit, or none do.

    with IndexWriter.open(folder, manifest_for_new) as writer:
        writer.upsert(...); writer.delete(...)
        writer.commit()          # without it, nothing is kept
    """

    def __init__(self, folder: Path, db: sqlite_utils.Database, manifest: Manifest, lock_handle, replace: bool):
        self.folder, self.db, self.manifest, self._lock = folder, db, manifest, lock_handle
        self.vectors = load_vectors(folder, manifest.generation, manifest.recipe.dimension)
        self._removed: list[np.ndarray] = []  # FAISS ids to drop; applied at commit (HNSW/IVF rebuild once)
        if replace:
            self._clear()
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
                raise BertdexError(f"{folder} is not a bertdex index: build it first with `bertdex index`")
            _remove_stale_files(folder, db)
            with db.atomic():
                if not has_manifest:
                    migrations.apply(db)
                    manifest = new
                else:
                    manifest = read_manifest(db, folder)
                    if new is not None and not replace and new.recipe != manifest.recipe:
                        diff = "; ".join(manifest.recipe.differences(new.recipe))
                        raise BertdexError(f"{folder} was built with another recipe ({diff}): use --replace to rebuild it")
                    if replace and new is not None:
                        manifest = new
                writer = cls(folder, db, manifest, lock_handle, replace)
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
        document_ids = []
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
            self.db.execute("INSERT INTO keywords(rowid, terms) VALUES (?, ?)", [row["id"], fts_document(doc["text"])])
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

    def _clear(self) -> None:
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
        self.manifest = Manifest(**{**self.manifest.__dict__, "index_type": index_type, "index_params": index_params})
        counts = self.db.execute("SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM passages)").fetchone()
        if counts[1] != ann.live_count(self.vectors):
            raise BertdexError(f"internal error: {counts[1]} passages but {ann.live_count(self.vectors)} vectors; nothing written")
        manifest = Manifest(**{**self.manifest.__dict__, "generation": generation, "documents": counts[0],
                               "vectors": counts[1], "updated": now(),
                               "created": self.manifest.created or now()})
        _write_faiss_file(self.vectors, vectors_path(self.folder, generation))
        self.db["manifest"].upsert_all(manifest.to_rows(), pk="name")
        self.db.conn.execute("COMMIT")
        self.db.conn.execute("BEGIN")  # the atomic() block that opened us closes this empty one
        self.committed = True
        self.manifest = manifest
        _remove_stale_files(self.folder, self.db)
        return manifest


class _Abandon(Exception):
    """Leaves the writer's transaction without committing."""


def _write_faiss_file(index: faiss.Index, path: Path) -> None:
    partial = path.with_suffix(".partial")
    faiss.write_index(index, str(partial))
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_stale_files(folder: Path, db: sqlite_utils.Database) -> None:
    """Delete FAISS files of other generations than the committed one (left by crashes or old commits)."""
    try:
        row = db.execute("SELECT value FROM manifest WHERE name = 'generation'").fetchone()
    except sqlite3.OperationalError:
        row = None
    current = vectors_path(folder, int(row[0])).name if row else None
    for path in folder.glob("vectors.*"):
        if path.name != current:
            path.unlink(missing_ok=True)


def _take_lock(folder: Path, *, create: bool):
    if not folder.exists():
        if not create:
            raise BertdexError(f"{folder} does not exist")
        folder.mkdir(parents=True)
    elif not folder.is_dir():
        raise BertdexError(f"{folder} is not a folder")
    elif create and not (folder / DB_NAME).exists() and any(p.name != LOCK_NAME for p in folder.iterdir()):
        raise BertdexError(f"{folder} is not empty and is not a bertdex index: choose a new or empty folder")
    elif not create and not (folder / DB_NAME).exists():
        raise BertdexError(f"{folder} is not a bertdex index (no {DB_NAME} in it)")
    handle = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise BertdexError(f"index {folder} is locked by pid {holder} (another write is running); try again when it ends") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle

"""The index's description and how to open its files: the SQLite schema, the Manifest, read-only
connections, and the FAISS file of the committed generation (checked by indexer.store.integrity).

What changes the folder (the writer, the lock, the commit) lives in indexer.store.folder, which
re-exports these names. This module does not write vectors or embed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss

from indexer.embed.adapted import is_adapted, remember_index
from indexer.embed.recipe import Recipe
from indexer.store.settings import IndexSettings, as_index_settings
from indexer.errors import BertdexError, IndexDamaged, IndexMissing, IndexReadOnly
from indexer.store import integrity

if TYPE_CHECKING:
    import sqlite_utils

FORMAT_VERSION = 2  # 2: the vectors are segments (indexer.store.segments); 1: one FAISS file, read as one segment
READABLE_FORMATS = (1, 2)
DB_NAME = integrity.DB_NAME

SCHEMA_STEPS = []  # the schema's migrations, in order: `schema()` hands them to sqlite-utils


def _step(migration):
    SCHEMA_STEPS.append(migration)
    return migration


def schema():
    """sqlite_utils.Migrations("bertdex") with SCHEMA_STEPS, built on first use: only writers need it, and a
    reader (a question, `info`) then imports no sqlite-utils (~0.1 s of CPU: pluggy, click, dateutil)."""
    global _SCHEMA
    if _SCHEMA is None:
        import sqlite_utils

        built = sqlite_utils.Migrations("bertdex")
        for migration in SCHEMA_STEPS:
            built()(migration)
        _SCHEMA = built
    return _SCHEMA


_SCHEMA = None


@_step
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


@_step
def m002_feedback_and_query_log(db: sqlite_utils.Database) -> None:
    """Agents' verdicts on answers, and the log of asked questions (see indexer.store.feedback)."""
    db["query_log"].create(
        {"id": int, "asked": str, "question": str, "mode": str, "answered": int, "hits": str},
        pk="id", not_null={"asked", "question"},
    )
    db["feedback"].create(
        {"id": int, "given": str, "question": str, "key": str, "verdict": str, "rank": int, "score": float,
         "query_id": int},
        pk="id", not_null={"given", "question", "key", "verdict"},
    )
    db["feedback"].create_index(["key"])


@_step
def m003_offtopic_sample(db: sqlite_utils.Database) -> None:
    """The shipped off-topic questions' vectors by the index's recipe: what each commit makes the cut from
    (indexer.store.offtopic). One row; `recipe` is the JSON of the recipe that embedded them."""
    db["offtopic_sample"].create({"id": int, "recipe": str, "language": str, "count": int, "vectors": bytes},
                                 pk="id", not_null={"recipe", "vectors"})


@_step
def m004_feedback_client(db: sqlite_utils.Database) -> None:
    """Who gave each verdict (the server's view of the client), so verdicts can be bounded and weighed per client."""
    db["feedback"].add_column("client", str)
    db["feedback"].create_index(["client"])


@dataclass(frozen=True)
class Manifest:
    """What an index is: its recipe, how its entries were read, and its current commit."""

    recipe: Recipe
    index_type: str = "flat"
    index_params: dict = field(default_factory=dict)
    settings: IndexSettings = field(default_factory=IndexSettings)  # a dict is read as IndexSettings
    generation: int = 0
    documents: int = 0
    vectors: int = 0
    created: str = ""
    updated: str = ""
    format_version: int = FORMAT_VERSION
    faiss_file: dict = field(default_factory=dict)  # format 1: {"bytes", "blake2b", "ntotal"} of vectors.<generation>.faiss
    encoded_with: tuple = ()  # the paths (backend, precision, device) that made the stored vectors
    # format 2 (indexer.store.segments): the FAISS files, oldest first, each {"file", "bytes", "blake2b",
    # "ntotal", "kind", "first_id", "last_id"}; the passage ids deleted but still in a file; and, for the
    # compressed types, the empty trained index new segments are coded with ({"file", "bytes", "blake2b"})
    segments: tuple = ()
    deleted: tuple = ()
    codebook: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "settings", as_index_settings(self.settings))

    def to_rows(self) -> list[dict]:
        values = {
            "recipe": self.recipe.to_dict(), "index_type": self.index_type, "index_params": self.index_params,
            "settings": self.settings.to_dict(), "generation": self.generation, "documents": self.documents,
            "vectors": self.vectors, "created": self.created, "updated": self.updated,
            "format_version": self.format_version, "faiss_file": self.faiss_file,
            "encoded_with": list(self.encoded_with), "segments": list(self.segments), "deleted": list(self.deleted),
            "codebook": self.codebook,
        }
        return [{"name": name, "value": json.dumps(value, ensure_ascii=False)} for name, value in values.items()]

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> "Manifest":
        values = {name: json.loads(value) for name, value in rows.items()}
        values["recipe"] = Recipe.from_dict(values["recipe"])
        values["encoded_with"] = tuple(values.get("encoded_with") or ())
        values["segments"] = tuple(values.get("segments") or ())
        values["deleted"] = tuple(values.get("deleted") or ())
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def content_hash(text: str, fields: dict, group: str | None) -> str:
    payload = json.dumps([text, fields, group], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def connect(folder: Path, *, readonly: bool = False) -> sqlite_utils.Database:
    """The index's SQLite file: read-only (also in a read-only folder) or for the one writer."""
    path = Path(folder) / DB_NAME
    if readonly:
        return ReadOnlyDatabase(integrity.connect_readonly(path))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.OperationalError as error:
        conn.close()
        if integrity.no_space(Path(folder), error):
            raise integrity.disk_full(Path(folder)) from None
        raise IndexReadOnly(f"index {folder} is read-only ({error})") from None
    except sqlite3.DatabaseError as error:
        conn.close()
        raise IndexDamaged(f"{path} is damaged ({error}): rebuild the index from its source") from None
    import sqlite_utils

    return sqlite_utils.Database(conn)


class ReadOnlyDatabase:
    """A read-only connection with the calls of sqlite_utils.Database that readers make (execute, table_names,
    conn, close), so reading an index imports no sqlite-utils; writers get a sqlite_utils.Database."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, parameters=()) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters)

    def table_names(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    def close(self) -> None:
        self.conn.close()


def read_manifest(db: sqlite_utils.Database, folder: Path) -> Manifest:
    try:
        tables = db.table_names()
        rows = dict(db.execute("SELECT name, value FROM manifest").fetchall()) if "manifest" in tables else {}
    except sqlite3.DatabaseError as error:
        raise IndexDamaged(f"{Path(folder) / DB_NAME} is damaged ({error}): rebuild the index from its source") from None
    if "manifest" not in tables:
        raise IndexMissing(f"{folder} is not a bertdex index (no manifest; was its first build interrupted?)")
    if "recipe" not in rows:
        raise IndexMissing(f"{folder} is not a bertdex index (empty manifest; was its first build interrupted?)")
    version = json.loads(rows.get("format_version", "0"))
    if version not in READABLE_FORMATS:
        raise BertdexError(f"{folder} has index format {version}; this bertdex reads formats "
                           f"{', '.join(map(str, READABLE_FORMATS))}: rebuild it")
    manifest = Manifest.from_rows(rows)
    if is_adapted(manifest.recipe.model) or manifest.recipe.projection:  # its model or map lives in the folder: let this process find it
        remember_index(folder)
    return manifest


def open_manifest(folder: str | Path) -> Manifest:
    """The manifest of an index, read through a connection closed before returning."""
    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        return read_manifest(db, folder)
    finally:
        db.close()


def vectors_path(folder: Path, generation: int) -> Path:
    return folder / f"vectors.{generation}.faiss"


def check_index_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexMissing(f"{folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    if not (folder / DB_NAME).is_file():
        raise IndexMissing(f"{folder} is not a bertdex index (no {DB_NAME} in it)")
    return folder


def load_vectors(folder: Path, generation: int, dimension: int, flags: int = 0) -> faiss.Index:
    """The live vectors of the committed generation as one FAISS index, unchecked (benchmarks, duplicates);
    readers use indexer.store.segments.open_segments. Several segments (or deletions) are joined into one
    flat index in memory. `generation`, `dimension`: as committed (kept for the callers)."""
    from indexer.store import segments

    manifest = open_manifest(folder)
    records = segments.records_of(manifest)
    if not records:
        return new_vector_index("flat", dimension, {})
    if len(records) == 1 and not manifest.deleted:
        return faiss.read_index(str(Path(folder) / records[0]["file"]), flags)
    ids, vectors = segments.open_segments(folder, manifest, flags=flags).stored()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    index.add_with_ids(vectors, ids)
    return index


def open_vectors(folder: Path, manifest: Manifest, *, checksum: bool = False, flags: int = 0, reuse=None):
    """The segments the manifest names (indexer.store.segments.SegmentSet: searched as one index), after
    each file's checks (and its checksum's); IndexDamaged if one fails. `reuse`: an earlier generation's set,
    whose files this one shares are not read again.

    `flags`: faiss.read_index flags (a searcher maps compressed types: indexer.store.ann_compressed.load_flag).
    """
    from indexer.store import segments

    return segments.open_segments(folder, manifest, checksum=checksum, flags=flags, reuse=reuse)


def check_counts(db: sqlite_utils.Database, folder: Path, manifest: Manifest) -> None:
    """The manifest's counts against the tables; IndexDamaged if they differ."""
    try:
        documents, passages = db.execute(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM passages)").fetchone()
    except sqlite3.DatabaseError as error:
        raise IndexDamaged(f"{Path(folder) / DB_NAME} is damaged ({error}): rebuild the index from its source") from None
    if (documents, passages) != (manifest.documents, manifest.vectors):
        raise IndexDamaged(f"{folder}: the manifest records {manifest.documents} entries and {manifest.vectors} "
                           f"vectors, the tables hold {documents} and {passages} (run `bertdex verify {folder}`)")


def new_vector_index(index_type: str, dimension: int, params: dict) -> faiss.Index:
    """An empty FAISS index with our ids (IndexIDMap2) over inner product on unit vectors (see indexer.store.ann)."""
    from indexer.store import ann

    return ann.new_index(index_type, dimension, params)

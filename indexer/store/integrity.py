"""Is the index folder what its manifest says? Checks of the FAISS file and the SQLite file.

Each commit records, in the manifest, the FAISS file's size, BLAKE2b checksum and vector count
(`FaissRecord`). Opening checks what is cheap (the file is there, its size, its header, then the
loaded index's dimension and count); writers and `bertdex verify` also check the checksum. A
failed check raises IndexDamaged naming the file and what is wrong. Read-only SQLite connections
(`mode=ro`, else `immutable=1`) live here too. This module does not write or repair (see repair).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from indexer.errors import DiskFull, IndexDamaged, IndexReadOnly

DB_NAME = "bertdex.db"  # an index folder's SQLite file (indexer.store.manifest)

FAISS_HEADERS = (b"IxM2", b"IxMp")  # IndexIDMap2 / IndexIDMap: every bertdex vector file is one
CHUNK_BYTES = 1 << 22
# opening (search.checks) and `bertdex info` check the checksum of a file up to this size: BLAKE2b read
# ~0.9 GB/s on the 2-core test machine, so at most ~75 ms; a larger file's checksum is `bertdex verify`'s
CHECKSUM_AT_OPEN_BYTES = 64 << 20


def checksum_affordable(record: dict) -> bool:
    """Whether opening checks the checksum of the file `record` describes (it has one and is small)."""
    return bool(record) and record.get("bytes", CHECKSUM_AT_OPEN_BYTES + 1) <= CHECKSUM_AT_OPEN_BYTES


def file_digest(path: Path) -> str:
    """BLAKE2b (16-byte digest, hex) of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def faiss_record(path: Path, ntotal: int) -> dict:
    """What the manifest records about a FAISS file it names: {"bytes", "blake2b", "ntotal"}."""
    return {"bytes": path.stat().st_size, "blake2b": file_digest(path), "ntotal": int(ntotal)}


def check_faiss_file(path: Path, record: dict, *, checksum: bool = False) -> None:
    """Cheap checks (present, size, header), and the checksum when asked; raises IndexDamaged.

    An index written before checksums were recorded (empty record) gets the presence and header checks only.
    """
    if not path.is_file():
        raise IndexDamaged(f"{path} is missing: the manifest names it (run `bertdex repair {path.parent}`)")
    size = path.stat().st_size
    if record and size != record.get("bytes"):
        raise IndexDamaged(f"{path} has {size:,} bytes; the manifest recorded {record['bytes']:,} "
                           f"(truncated or overwritten; run `bertdex repair {path.parent}`)")
    with open(path, "rb") as handle:
        header = handle.read(4)
    if header not in FAISS_HEADERS:
        raise IndexDamaged(f"{path} does not start with a FAISS id-map header (found {header!r}; "
                           f"run `bertdex repair {path.parent}`)")
    if checksum and record and file_digest(path) != record.get("blake2b"):
        raise IndexDamaged(f"{path}: its checksum differs from the one recorded at its commit "
                           f"(the file changed on disk; run `bertdex repair {path.parent}`)")


def read_faiss(path: Path, record: dict, dimension: int, *, checksum: bool = False, flags: int = 0):
    """The FAISS index at `path` after `check_faiss_file`, checked against the dimension and count.

    `flags`: for faiss.read_index (a searcher memory-maps the compressed types, indexer.store.ann_compressed).
    """
    import faiss

    check_faiss_file(path, record, checksum=checksum)
    try:
        index = faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as error:
        reason = str(error).strip().splitlines()[-1][:160] if str(error).strip() else type(error).__name__
        raise IndexDamaged(f"{path} cannot be read by FAISS ({reason}); run `bertdex repair {path.parent}`") from None
    if index.d != dimension:
        raise IndexDamaged(f"{path} holds {index.d}-dimensional vectors; the recipe says {dimension}")
    if record and index.ntotal != record.get("ntotal"):
        raise IndexDamaged(f"{path} holds {index.ntotal} vectors; the manifest recorded {record['ntotal']}")
    if hasattr(index, "id_map") and index.ntotal:
        ids = faiss.vector_to_array(index.id_map)
        if ids.min() < -1:  # passage ids count from 1; -1 marks a deleted HNSW node
            raise IndexDamaged(f"{path}: its id map holds impossible ids (e.g. {ids.min()}); "
                               f"run `bertdex repair {path.parent}`")
    return index


LOW_SPACE_BYTES = 1 << 20  # a write that failed with less than this free failed for want of space


def no_space(folder: Path, error: BaseException | None = None) -> bool:
    """Did a failed write in `folder` fail because its file system is full? ENOSPC/EDQUOT, SQLite's
    "database or disk is full", or (FAISS's and SQLite's I/O errors name no errno) under LOW_SPACE_BYTES free."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, sqlite3.Error) and "full" in str(error).lower():
        return True
    try:
        found = os.statvfs(folder)
    except OSError:
        return False
    return found.f_bavail * found.f_frsize < LOW_SPACE_BYTES


def disk_full(folder: Path) -> DiskFull:
    return DiskFull(f"disk full: no space left on the device of {folder}; nothing from this command was committed "
                    "and the index is as it was (free some space and run it again)")


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite file `path`, also in a folder this process cannot write.

    `mode=ro` shares the write-ahead log with writers; where it cannot open (a read-only folder with
    no -shm file), `immutable=1` reads the file as it is, which is right only when no write-ahead log
    is pending: with one, the folder must be opened once where it is writable.
    """
    folder = path.parent
    if not path.is_file():
        raise IndexDamaged(f"{path} is missing")
    try:
        return _probed(_uri(path, "mode=ro"), path)
    except sqlite3.OperationalError as error:
        if no_space(folder, error):  # SQLite cannot make its -shm file: that is no damage
            raise disk_full(folder) from None
        if _writable(folder) and os.access(path, os.R_OK):
            raise IndexDamaged(f"{path} cannot be opened: {error}") from None
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        raise IndexReadOnly(f"index {folder} is read-only and holds an unfinished write ({wal.name}): "
                            "open it once where it is writable") from None
    try:
        return _probed(_uri(path, "immutable=1"), path)
    except sqlite3.OperationalError as error:
        raise IndexReadOnly(f"index {folder} cannot be read: {error}") from None


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _uri(path: Path, option: str) -> str:
    return f"file:{quote(str(path.resolve()))}?{option}"


def _probed(uri: str, path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        raise
    except sqlite3.DatabaseError as error:
        conn.close()
        raise IndexDamaged(f"{path} is damaged ({error}): rebuild the index from its source with `bertdex index --replace`") from None
    return conn

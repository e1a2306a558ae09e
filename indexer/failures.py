"""Known failures -> (one line, exit status): what the CLI prints instead of a traceback.

`explain(error, folder)` names the index folder (or the file the error names) and what went
wrong; each kind has its own exit status (the table below, also in the README). Anything it does
not know returns None, and the CLI lets it surface as the bug it is. It prints nothing.
"""

from __future__ import annotations

import errno
import gzip
import sqlite3
import zlib
from pathlib import Path

from indexer.errors import BertdexError, DiskFull, IndexDamaged, IndexReadOnly, InputUnreadable

USAGE = 2  # a bad option or argument (also typer's own usage errors)
NO_SPACE = DiskFull.exit_code  # the disk is full
OTHER_OS = 9  # another operating-system error
EXIT_CODES = {  # status -> meaning, for --help texts and docs/index-folder.md
    1: "query: a question got no good answer; get: a key is not in the index; verify: BROKEN; "
       "other commands: bad input (a file's row, a value)",
    USAGE: "usage: a bad option or argument, a value out of range, a filter or column field no entry has; "
           "query and get: any bad input",
    InputUnreadable.exit_code: "an input file cannot be read (missing, a folder, not gzip, not UTF-8)",
    4: "no index there", 5: "the index is locked by another writer", IndexReadOnly.exit_code: "the index is read-only",
    IndexDamaged.exit_code: "the index is damaged (`bertdex verify`, `bertdex repair`)", NO_SPACE: "no space left",
    OTHER_OS: "another operating-system error", 130: "interrupted",
}
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def explain(error: BaseException, folder: Path | None = None) -> tuple[str, int] | None:
    """(message, exit status) for a failure a user can meet, else None.

    explain(gzip.BadGzipFile("Not a gzipped file"), None) -> ("input is not a gzip file (Not a gzipped file)", 3)
    """
    where = f"index {folder}" if folder is not None else "the index"
    if isinstance(error, BertdexError):
        return str(error), error.exit_code
    if isinstance(error, (gzip.BadGzipFile, EOFError, zlib.error)):
        return f"input is not a complete gzip file ({_first_line(error)})", InputUnreadable.exit_code
    if isinstance(error, UnicodeDecodeError):
        return f"input is not valid UTF-8 (byte {error.start + 1}): convert it to UTF-8", InputUnreadable.exit_code
    if isinstance(error, UnicodeEncodeError):
        return f"a value is not valid Unicode ({error.reason}); was the input UTF-8?", 1
    if isinstance(error, sqlite3.OperationalError) and "full" in str(error).lower():
        return f"disk full: {where} cannot grow (no space left on the device): nothing from this command was committed", NO_SPACE
    if isinstance(error, sqlite3.OperationalError) and "readonly" in str(error).replace(" ", "").lower():
        return f"{where} is read-only", IndexReadOnly.exit_code
    if isinstance(error, sqlite3.DatabaseError):
        return f"{where}: bertdex.db is damaged or unreadable ({_first_line(error)})", IndexDamaged.exit_code
    if isinstance(error, RuntimeError) and "faiss" in str(error).lower():
        return f"{where}: a FAISS file cannot be read ({_first_line(error)})", IndexDamaged.exit_code
    if isinstance(error, OverflowError):
        return f"a number is out of range ({_first_line(error)})", USAGE
    if isinstance(error, OSError):
        return _os_error(error, where)
    return None


def _os_error(error: OSError, where: str) -> tuple[str, int]:
    name = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or _first_line(error)
    if error.errno in _READ_ONLY:
        return f"{name}{reason} ({where} or the file is read-only)", IndexReadOnly.exit_code
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{name}disk full (no space left on the device): nothing from this command was committed", NO_SPACE
    if error.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
        return f"{name}{reason}", InputUnreadable.exit_code
    return f"{name}{reason}", OTHER_OS


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[-1] if "faiss" in text.lower() else text.splitlines()[0])[:200] if text else type(error).__name__

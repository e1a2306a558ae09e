"""Entries from a stream (the CLI's `-` for stdin): copied to a temporary file, its format sniffed.

The readers read their input twice (check, then embed), and a pipe can be read once, so the stream is
spooled to disk first; messages about it then name `<stdin>` rather than the temporary file. This
module reads only the stream it is given (never `sys.stdin` itself) and embeds nothing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from indexer.errors import BertdexError
from indexer.ingest.readers import DELIMITERS, sniff_delimiter

NAME = "<stdin>"
_SAMPLE = 65536
_SUFFIX = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "text": ".txt"}
_HEADER_CELL = re.compile(r'^"?[\w][\w .\-]{0,63}"?$')


def sniff_format(sample: str) -> str:
    """jsonl, tsv, csv or text from the first lines of a stream with no file name.

    A CSV needs a header of two or more short names (`id;question`); a line of prose with a comma is text.
    sniff_format('{"id": 1}\\n') -> 'jsonl'; sniff_format("id,question\\n1,hi\\n") -> 'csv'
    sniff_format("Where is my parcel, please?\\n") -> 'text'
    """
    first = next((line for line in sample.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    for fmt, delimiter in (("tsv", "\t"), ("csv", sniff_delimiter(first))):
        cells = [cell.strip() for cell in first.split(delimiter)]
        if delimiter in DELIMITERS and len(cells) > 1 and all(_HEADER_CELL.match(cell) for cell in cells):
            return fmt
    return "text"


@dataclass(frozen=True)
class Spooled:
    """A stream's copy on disk: read `path`; `rename` puts `<stdin>` in place of its name in a message."""

    path: Path
    fmt: str

    def rename(self, message: str) -> str:
        return message.replace(str(self.path), NAME)


@contextmanager
def spooled(stream: BinaryIO, fmt: str | None = None) -> Iterator[Spooled]:
    """Copy `stream` to a temporary file for the readers; removed on exit. Errors inside name `<stdin>`."""
    with tempfile.TemporaryDirectory(prefix="bertdex-stdin-") as folder:
        head = stream.read(_SAMPLE)
        fmt = fmt or sniff_format(head.decode("utf-8", errors="replace"))
        path = Path(folder) / f"stdin{_SUFFIX.get(fmt, '.txt')}"
        with open(path, "wb") as out:
            out.write(head)
            shutil.copyfileobj(stream, out)
        copy = Spooled(path, fmt)
        try:
            yield copy
        except BertdexError as error:
            raise BertdexError(copy.rename(str(error))) from None

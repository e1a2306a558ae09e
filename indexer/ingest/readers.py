"""Input files -> entries (key, text to embed, other fields), streamed, each with its line number.

Reads CSV (RFC 4180 quoting) and TSV (no quoting) with a header, JSON Lines, and plain text
(one entry per line), strictly as UTF-8, optionally gzip-compressed (`.csv.gz`, ...). A CSV's delimiter
(`,` `;` `|` or tab) is sniffed from its first lines unless given. Every problem is a BertdexError naming
the file and line. This module does not embed or store anything, and does not read stdin (see `stdin.py`).
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import sqlite3
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import BertdexError, InputUnreadable
from indexer.ingest.entries import EMPTY, FILE_TEXT_CHARS, field_problem, key_problem, text_problem

FORMATS = ("csv", "tsv", "jsonl", "text")
MAX_TEXT_CHARS = FILE_TEXT_CHARS
_ID_FIELDS = ("id", "_id", "key")
_TEXT_FIELDS = ("text", "question", "content", "body", "sentence")
DELIMITERS = ",;|\t"
_SNIFF_LINES = 50

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Entry:
    """One input row: `text` is what gets embedded, `fields` everything else the row held."""

    key: str
    text: str
    fields: dict = field(default_factory=dict)
    group: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Problem:
    """A row that could not be read, as one line: 'faq.csv:12: no "question" field'."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise BertdexError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = (path.with_suffix("") if path.suffix.lower() == ".gz" else path).suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "jsonl"}.get(suffix, "text")


def check_delimiter(delimiter: str | None) -> str | None:
    """None (sniff), or one character; the two characters `\\t` mean a tab."""
    if delimiter is None:
        return None
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if len(delimiter) != 1 or delimiter in "\r\n\"":
        raise BertdexError(f"--delimiter {delimiter!r}: give one character, such as ';' or '\\t'")
    return delimiter


def sniff_delimiter(sample: str) -> str:
    """The delimiter of a CSV sample: csv.Sniffer's choice among , ; | and tab when the header holds it,
    else the one the header holds most of, else ','.

    sniff_delimiter("id;question\n1;where is it, then?\n") -> ';'
    """
    header = sample.splitlines()[0] if sample else ""
    try:
        found = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        found = None
    if found and found in header:
        return found
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)  # ties go to ',', the first
    return best if counts[best] else ","


def read_records(path: Path, fmt: str | None = None, delimiter: str | None = None) -> Iterator[tuple[int, dict | Problem]]:
    """(line number, record dict or Problem) for each row of `path`, streamed.

    `delimiter` (CSV only): None sniffs it; giving one makes a file of unknown extension a CSV.
    """
    path = Path(path)
    if path.is_dir():
        raise InputUnreadable(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise InputUnreadable(f"{path}: no such file")
    delimiter = check_delimiter(delimiter)
    fmt = detect_format(path, fmt)
    if delimiter is not None and fmt == "text":
        fmt = "csv"
    compressed = path.suffix.lower() == ".gz"
    try:
        with (gzip.open if compressed else open)(path, "rb") as handle:
            yield from _records(_decoded_lines(handle, path), path, fmt, delimiter)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise InputUnreadable(f"{path}: not a complete gzip file ({error})") from None
    except OSError as error:
        raise InputUnreadable(f"{path}: cannot be read ({error.strerror or error})") from None


def _records(lines, path: Path, fmt: str, delimiter: str | None) -> Iterator[tuple[int, dict | Problem]]:
    if fmt == "tsv":
        yield from _csv_records(lines, path, "\t")
    elif fmt == "csv":
        head = list(itertools.islice(lines, _SNIFF_LINES))
        found = delimiter or sniff_delimiter("".join(line for _, line in head))
        yield from _csv_records(itertools.chain(head, lines), path, found)
    elif fmt == "jsonl":
        yield from _json_records(lines, path)
    else:
        for number, line in lines:
            yield number, {"text": line.rstrip("\r\n")}


def _decoded_lines(handle, path: Path) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputUnreadable(f"{path}:{number}: not valid UTF-8 (byte {error.start + 1}): convert the file to UTF-8") from None


def _csv_records(lines, path: Path, delimiter: str) -> Iterator[tuple[int, dict | Problem]]:
    position = {"line": 0}

    def text_lines():
        for number, line in lines:
            position["line"] = number
            yield line

    # TSV carries no quoting (a review may start with '"'); CSV follows RFC 4180 quoting
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text_lines(), delimiter=delimiter, strict=True, quoting=quoting)
    header = None
    while True:
        start = position["line"] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield start, Problem(str(path), start, f"malformed CSV: {error}")
            continue
        if header is None:
            header = [name.strip() for name in row]
            if not any(header):
                raise BertdexError(f"{path}:1: the first line must be a header naming the columns")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield start, Problem(str(path), start, f"{len(row)} columns where the header has {len(header)}")
            continue
        yield start, dict(zip(header, row))


def _json_records(lines, path: Path) -> Iterator[tuple[int, dict | Problem]]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, Problem(str(path), number, f"invalid JSON: {error.msg} at column {error.colno}")
            continue
        if not isinstance(record, dict):
            yield number, Problem(str(path), number, "each line must be a JSON object")
            continue
        yield number, record


@dataclass(frozen=True)
class Fields:
    """Which input fields make the text, the key and the group."""

    text: tuple[str, ...] = ()
    key: str | None = None
    group: str | None = None


def choose_fields(record: dict, wanted: Fields, path: Path, line: int) -> Fields:
    """Fill in what the user did not name from the first record: 'text'/'question' and 'id'/'_id'."""
    names = list(record)
    text = wanted.text or tuple(n for n in _TEXT_FIELDS if n in record)[:1]
    if not text:
        raise BertdexError(f"{path}:{line}: no text field among {names}: name one with --text-field")
    for name in text:
        if name not in record:
            raise BertdexError(f"{path}:{line}: no field {name!r} (fields: {', '.join(map(str, names))})")
    key = wanted.key or next((n for n in _ID_FIELDS if n in record), None)
    if wanted.key and wanted.key not in record:
        raise BertdexError(f"{path}:{line}: no field {wanted.key!r} for --id-field (fields: {', '.join(map(str, names))})")
    if wanted.group and wanted.group not in record:
        raise BertdexError(f"{path}:{line}: no field {wanted.group!r} for --group-field (fields: {', '.join(map(str, names))})")
    return Fields(text, key, wanted.group)


def chosen_fields(path: Path, wanted: Fields = Fields(), fmt: str | None = None,
                  delimiter: str | None = None) -> Fields:
    """The fields `read_entries` uses: those named, the rest chosen from the first readable row."""
    for line, record in read_records(Path(path), fmt, delimiter):
        if not isinstance(record, Problem):
            return choose_fields(record, wanted, Path(path), line)
    return wanted


def read_entries(path: Path, wanted: Fields = Fields(), fmt: str | None = None,
                 delimiter: str | None = None) -> Iterator[Entry | Problem]:
    """Entries of `path`, or a Problem for each row that cannot be one; keys must be unique."""
    path = Path(path)
    fields, seen = None, _SeenKeys()
    for line, record in read_records(path, fmt, delimiter):
        if isinstance(record, Problem):
            yield record
            continue
        if fields is None:
            fields = choose_fields(record, wanted, path, line)
        entry = _entry(record, fields, path, line)
        if isinstance(entry, Entry):
            first = seen.add(entry.key, line)
            if first is not None:
                entry = Problem(str(path), line, f"key {entry.key!r} repeats line {first}")
        yield entry
    if fields is None:
        raise BertdexError(f"{path}: no entries in the file")


class _SeenKeys:
    """Keys met so far, in SQLite's private temporary database: it spills to disk, so memory stays
    flat however many entries a file has."""

    def __init__(self):
        self.db = sqlite3.connect("")
        self.db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")

    def add(self, key: str, line: int) -> int | None:
        """None if `key` is new, else the line it was first seen on."""
        try:
            self.db.execute("INSERT INTO seen VALUES (?, ?)", (key, line))
            return None
        except sqlite3.IntegrityError:
            return self.db.execute("SELECT line FROM seen WHERE key = ?", (key,)).fetchone()[0]


def _entry(record: dict, fields: Fields, path: Path, line: int) -> Entry | Problem:
    def problem(reason: str) -> Problem:
        return Problem(str(path), line, reason)

    parts = []
    for name in fields.text:
        value = record.get(name)
        if value is None:
            return problem(f"no {name!r} field")
        if not isinstance(value, (str, int, float)):
            return problem(f"field {name!r} is not text")
        parts.append(str(value))
    text, reason = text_problem(" ".join(parts), MAX_TEXT_CHARS)
    if reason == EMPTY:
        return problem("empty text" + (f" in {', '.join(map(repr, fields.text))}"))
    if reason:
        return problem(reason)
    if fields.key:
        key = record.get(fields.key)
        if key is None or str(key).strip() == "":
            return problem(f"no value for the key field {fields.key!r}")
        key = str(key).strip()
        reason = key_problem(key)
        if reason:
            return problem(reason)
    else:
        key = str(line)
    group = None
    if fields.group:
        group = record.get(fields.group)
        group = None if group is None or str(group).strip() == "" else str(group).strip()
    # several text fields (question + answer): each stays a stored field as written (newlines kept);
    # one text field is the entry's text
    joined = len(fields.text) > 1
    others = {name: value for name, value in record.items()
              if (joined or name not in fields.text) and name != fields.key}
    for name, value in [*others.items(), *([(fields.group, group)] if group is not None else [])]:
        reason = field_problem(name, value, MAX_TEXT_CHARS)
        if reason:
            return problem(reason)
    return Entry(key, text, others, group, line)


def read_questions(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, one question each (for `query --file`, `calibrate`), strictly UTF-8."""
    from indexer.ingest.entries import read_question_file

    return read_question_file(Path(path))


def split_questions(text: str) -> list[str]:
    """One question per non-empty line: split_questions("a\\n\\n b \\n") -> ["a", "b"]."""
    return [line.strip() for line in text.splitlines() if line.strip()]

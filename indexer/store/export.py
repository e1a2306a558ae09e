"""Entries out of an index, as they went in: one stored entry by key (`bertdex get`), or all of them as
rows that `bertdex index` reads back (`bertdex export`). Reads SQLite only: no model, no vectors.

A row carries the key under the index's id field, the text under its text field (an index that
joined several text fields stores each of them as a field, so the row has them already), and every
stored field, the group's among them. `reindex_options` says which options read the rows back the
same way. This module writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.store.manifest import check_index_folder, connect, read_manifest

BATCH = 1000


@dataclass(frozen=True)
class Layout:
    """Which row fields hold the key, the text and the group: Layout("id", ("question",), "group")."""

    key: str
    text: tuple[str, ...]
    group: str | None

    def row(self, key: str, text: str, fields: dict, group: str | None) -> dict:
        """The input row of one stored entry: row("a1", "How?", {"answer": "So."}, None)
        -> {"id": "a1", "question": "How?", "answer": "So."}"""
        row = {self.key: key}
        if len(self.text) == 1:
            row[self.text[0]] = text
        row.update((name, value) for name, value in fields.items() if name != self.key)
        if self.group and group is not None and self.group not in row:
            row[self.group] = group
        return row

    def reindex_options(self) -> list[str]:
        """The `bertdex index` options that read these rows back as the same entries."""
        options = [word for name in self.text for word in ("-t", name)] + ["--id-field", self.key]
        return options + (["--group-field", self.group] if self.group else [])


def layout(settings) -> Layout:
    """The row layout of an index from its recorded fields (text, else `text`; id, else `id`)."""
    text = tuple(settings.text_fields) or ("text",)
    return Layout(settings.id_field or "id", text, settings.group_field)


class Entries:
    """Entries(folder): .get(key) -> the input row of one entry or None; .document(key) -> the entry as
    HTTP's GET /documents/{key} shows it; iterate -> every input row, in key order."""

    def __init__(self, folder: str | Path):
        self.folder = check_index_folder(Path(folder))
        self.db = connect(self.folder, readonly=True)
        self.layout = layout(read_manifest(self.db, self.folder).settings)

    def get(self, key: str) -> dict | None:
        found = self.db.execute("SELECT key, text, fields, group_key FROM documents WHERE key = ?", [key]).fetchone()
        return None if found is None else self._row(found)

    def document(self, key: str) -> dict | None:
        """{"key", "text", "fields", "group", "variants"}: the shape of GET /documents/{key}, or None."""
        found = self.db.execute("SELECT key, text, fields, group_key FROM documents WHERE key = ?", [key]).fetchone()
        if found is None:
            return None
        key, text, fields, group = found
        variants = [row[0] for row in self.db.execute("SELECT key FROM documents WHERE group_key = ? ORDER BY id",
                                                      [group])] if group is not None else []
        return {"key": key, "text": text, "fields": json.loads(fields or "{}"), "group": group, "variants": variants}

    def __iter__(self) -> Iterator[dict]:
        last = None
        while True:  # keyset pages: memory stays flat however many entries there are
            rows = self.db.execute("SELECT key, text, fields, group_key FROM documents"
                                   + (" WHERE key > ?" if last is not None else "") + " ORDER BY key LIMIT ?",
                                   [*([last] if last is not None else []), BATCH]).fetchall()
            if not rows:
                return
            yield from map(self._row, rows)
            last = rows[-1][0]

    def _row(self, found) -> dict:
        key, text, fields, group = found
        return self.layout.row(key, text, json.loads(fields or "{}"), group)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Entries":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

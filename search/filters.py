"""Filters on stored fields (`--where category=billing`) and the checks around a search's options.

A filter maps a field name to one value or to several (any of them passes: two `--where` on one field
are an OR). When a filtered search finds nothing, `filter_problem` says why in one line: the field
is on no entry, or no entry has that value (with the values that exist). This module does not rank.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from indexer.errors import OptionOutOfRange, UsageError

_SHOWN_VALUES = 12


def parse_where(items: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """NAME=VALUE strings -> field -> allowed values, in the order given; one field named twice is an OR.

    parse_where(["category=billing", "category=account", "lang=en"])
    -> {"category": ("billing", "account"), "lang": ("en",)}
    """
    filters: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--where {item!r}: use NAME=VALUE")
        filters[name] = filters.get(name, ()) + (value,)
    return filters


def passes(fields: dict, filters: dict) -> bool:
    """True when every filtered field holds one of its allowed values (compared as text)."""
    for name, wanted in filters.items():
        allowed = wanted if isinstance(wanted, (list, tuple, set, frozenset)) else (wanted,)
        if str(fields.get(name)) not in {str(value) for value in allowed}:
            return False
    return True


def check_weight(weight: float | None) -> None:
    """Hybrid weight: the dense side's share, a number in [0, 1] (NaN refused), or None for the index's."""
    if weight is not None and not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0 <= weight <= 1):
        raise OptionOutOfRange(f"--weight {weight}: the hybrid weight must be between 0 and 1 (the dense side's share)")


def has_field(db, name: str) -> bool:
    """Whether any stored entry has the field `name` (stops at the first one)."""
    path = "$." + json.dumps(name)
    return db.execute("SELECT 1 FROM documents WHERE json_type(fields, ?) IS NOT NULL LIMIT 1", [path]).fetchone() is not None


def check_filter_fields(db, filters: dict | None) -> None:
    """A filter on a field that no entry has is a usage error (exit 2), named with the fields there are.

    check_filter_fields(db, {"categry": ("billing",)})
    -> UsageError("--where categry=...: no entry has a field 'categry' (fields: answer, category, group)")
    """
    for name in filters or {}:
        if not has_field(db, name):
            raise UsageError(f"--where {name}=...: no entry has a field {name!r} "
                             f"(fields: {', '.join(field_names(db)) or 'none'})")


def filter_problem(db, filters: dict | None) -> str | None:
    """Why no entry can pass `filters`, as one line, or None when some entry does.

    "no entry has a field 'categry' (fields: answer, category, group)"
    "no entry with category=Billing (values: account, billing, shipping)"
    """
    for name, wanted in (filters or {}).items():
        allowed = wanted if isinstance(wanted, (list, tuple, set, frozenset)) else (wanted,)
        path = "$." + json.dumps(name)
        present = db.execute("SELECT 1 FROM documents WHERE json_type(fields, ?) IS NOT NULL LIMIT 1", [path]).fetchone()
        if present is None:
            return f"no entry has a field {name!r} (fields: {', '.join(field_names(db)) or 'none'})"
        values = [str(row[0]) for row in db.execute(
            "SELECT DISTINCT json_extract(fields, ?) AS v FROM documents WHERE v IS NOT NULL ORDER BY v LIMIT ?",
            [path, _SHOWN_VALUES + 1])]
        if not {str(value) for value in allowed} & set(_all_values(db, path, allowed)):
            shown = ", ".join(values[:_SHOWN_VALUES]) + (", ..." if len(values) > _SHOWN_VALUES else "")
            asked = " or ".join(f"{name}={value}" for value in allowed)
            return f"no entry with {asked} (values: {shown})"
    return None


def _all_values(db, path: str, allowed) -> list[str]:
    marks = ", ".join("?" for _ in allowed)
    rows = db.execute(f"SELECT DISTINCT CAST(json_extract(fields, ?) AS TEXT) FROM documents "
                      f"WHERE CAST(json_extract(fields, ?) AS TEXT) IN ({marks})", [path, path, *map(str, allowed)])
    return [row[0] for row in rows]


def field_names(db) -> list[str]:
    """The stored fields' names, sorted (the first 50): what an error about a field lists."""
    rows = db.execute("SELECT DISTINCT j.key FROM documents, json_each(documents.fields) AS j ORDER BY j.key LIMIT 50")
    return [row[0] for row in rows]

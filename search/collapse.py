"""From ranked candidate rows to one row per document and per group: shared by the Searcher and the tuner.

A row is (document id, score, passage id or None), best first. Both sides take the same candidate
pools (`pool_size`), drop the question's own entries (`without`) before collapsing, and keep the
first row of each document, then of each group, so the tuner ranks exactly as the searcher does.
This module does not search or read the index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

POOL = 50            # candidates per side for k <= 10: what the tuner measures with
MAX_POOL = 10_000    # the searcher widens its pools up to this while collapsing leaves fewer than k rows
DENSE_PER_ENTRY = 4  # extra dense candidates fetched per excluded entry (it may hold several windows)

Row = tuple[int, float, "int | None"]


def pool_size(want: int) -> int:
    """Candidates per side for `want` results (at least POOL).

    pool_size(5) -> 50, pool_size(40) -> 170
    """
    return min(max(4 * want + 10, POOL), MAX_POOL)


def without(ranked: list[Row], exclude: frozenset) -> list[Row]:
    """The rows whose document is not in `exclude` (a question's own entries)."""
    return [row for row in ranked if row[0] not in exclude] if exclude else ranked


def collapse(ranked: Iterable[Row], groups: Mapping[int, "str | None"], *, keep: Callable[[int], bool] | None = None,
             limit: int | None = None) -> list[Row]:
    """Best row per document, then per group, in rank order; at most `limit` rows.

    `groups`: document id -> group key (None: no group); rows of documents not in it are dropped.
    `keep(document id)`: False drops the row (filters) before its group is counted as seen.
    collapse([(1, .9, 1), (2, .8, 2), (1, .7, 3), (3, .6, 4)], {1: "g", 2: "g", 3: None}) -> [(1, .9, 1), (3, .6, 4)]
    """
    seen_docs, seen_groups, kept = set(), set(), []
    for row in ranked:
        doc = row[0]
        if doc in seen_docs or doc not in groups:
            continue
        seen_docs.add(doc)
        if keep is not None and not keep(doc):
            continue
        group = groups[doc]
        if group is not None:
            if group in seen_groups:
                continue
            seen_groups.add(group)
        kept.append(row)
        if limit is not None and len(kept) >= limit:
            break
    return kept

"""bertdex search: open an index, answer questions with ranked entries.

Rooms: `searcher` and `keyword` (answering), `quality/` (metrics, evaluate, tune, calibrate),
`server/` (HTTP, the search page). Names load on first use, as in `indexer`.
"""

from importlib import import_module

_EXPORTS = {"Hit": "search.searcher", "Searcher": "search.searcher", "open_manifest": "search.searcher"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value

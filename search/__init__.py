"""bertdex search: open an index, answer questions with ranked entries."""

from search.searcher import Hit, Searcher, open_manifest

__all__ = ["Hit", "Searcher", "open_manifest"]

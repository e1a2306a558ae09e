"""The index folder: SQLite (texts, keywords, manifest) beside FAISS files, changed all-or-nothing.

folder (the writer, the lock, the commit), ann (FAISS index types), keywords (FTS5 terms),
verify, coverage (warnings about a collection), info (what `bertdex info` reports). No embedding here.
"""

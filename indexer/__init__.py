"""bertdex indexer: read entries, embed them with a BERT model, store vectors and texts.

Rooms: `embed/` (the embedding engine both sides use), `ingest/` (files -> checked entries -> one
commit), `store/` (the index folder: SQLite + FAISS), `tutorial/` (tokens, layers, word vectors).
The names below load their module on first use, so `import indexer` (and `bertdex verify`, `delete`)
pays for torch and transformers only when an encoder is made.
"""

from importlib import import_module

_EXPORTS = {
    "BertdexError": "indexer.errors", "BuildReport": "indexer.ingest.build", "add_documents": "indexer.ingest.build",
    "build_index": "indexer.ingest.build", "delete_documents": "indexer.ingest.build",
    "DEFAULT_MODEL": "indexer.embed.models", "Recipe": "indexer.embed.recipe",
    # the tutorial, one function per step
    "layer_report": "indexer.tutorial.tokens", "load_encoder": "indexer.tutorial.tokens",
    "token_histogram": "indexer.tutorial.tokens", "token_table": "indexer.tutorial.tokens",
    "embed_texts": "indexer.tutorial.words", "save_vectors": "indexer.tutorial.words",
    "sentence_vectors": "indexer.tutorial.words", "similar_word": "indexer.tutorial.words",
    "word_vectors": "indexer.tutorial.words",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value

"""bertdex indexer: read entries, embed them with a BERT model, store vectors and texts."""

from indexer.build import BuildReport, add_documents, build_index, delete_documents
from indexer.errors import BertdexError
from indexer.model import DEFAULT_MODEL
from indexer.recipe import Recipe

__all__ = ["BertdexError", "BuildReport", "DEFAULT_MODEL", "Recipe", "add_documents", "build_index",
           "delete_documents"]

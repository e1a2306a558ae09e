"""bertdex indexer: read entries, embed them with a BERT model, store vectors and texts."""

from indexer.build import BuildReport, add_documents, build_index, delete_documents
from indexer.errors import BertdexError
from indexer.model import DEFAULT_MODEL
from indexer.recipe import Recipe
from indexer.tokens import layer_report, load_encoder, token_histogram, token_table
from indexer.words import embed_texts, save_vectors, sentence_vectors, similar_word, word_vectors

__all__ = ["BertdexError", "BuildReport", "DEFAULT_MODEL", "Recipe", "add_documents", "build_index",
           "delete_documents",
           # the tutorial, one function per step
           "embed_texts", "layer_report", "load_encoder", "save_vectors", "sentence_vectors", "similar_word",
           "token_histogram", "token_table", "word_vectors"]

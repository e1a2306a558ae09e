"""The tutorial's steps on any BERT: WordPiece tokens, the hidden states, word and sentence vectors."""

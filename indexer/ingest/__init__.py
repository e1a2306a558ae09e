"""Text in, committed index out: read rows, check them, embed them, and write them in one commit.

readers (files -> checked entries), build (index/add/delete), reembed (the index's own texts again).
"""

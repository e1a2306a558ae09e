"""The HTTP service: the FastAPI app, its guard (auth, limits), the micro-batcher and the search page."""

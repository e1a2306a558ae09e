"""The range of every numeric option, checked once here for every door: the CLI, the library, HTTP.

A value outside its range raises OptionOutOfRange (exit 2, HTTP 422) naming the option as the CLI
spells it; nothing is clamped or replaced without a word. Limits on what is stored (texts, keys,
fields) are the entries' (indexer.ingest.entries). This module imports nothing heavy.
"""

from __future__ import annotations

from indexer.errors import OptionOutOfRange

MIN_TOKENS = 8  # a window of fewer tokens holds [CLS], [SEP] and almost nothing
MAX_TOKENS = 512  # no bundled or BERT-family model reads more positions
MAX_K = 1000  # answers per question (the HTTP service allows fewer: search.server.requests)
DEFAULT_WINDOW = 128


def check_range(option: str, value, low=None, high=None, *, why: str = ""):
    """`value` when low <= value <= high (a bound of None: open), else OptionOutOfRange.

    check_range("-k", 0, 1, 1000) -> OptionOutOfRange("-k 0 is out of range: use 1 to 1000")
    """
    if value is None or ((low is None or value >= low) and (high is None or value <= high)):
        return value
    span = (f"{low} to {high}" if low is not None and high is not None
            else f"at least {low}" if low is not None else f"at most {high}")
    raise OptionOutOfRange(f"{option} {value} is out of range: use {span}{f' ({why})' if why else ''}")


def check_max_length(max_length: int | None, model_limit: int = MAX_TOKENS) -> int | None:
    """--max-length: None (the model's limit) or MIN_TOKENS..the model's limit (at most MAX_TOKENS)."""
    return check_range("--max-length", max_length, MIN_TOKENS, min(model_limit, MAX_TOKENS),
                       why="the model reads no more" if model_limit < MAX_TOKENS else "")


def check_windows(max_length: int | None, window_length: int | None, stride: int | None) -> tuple[int, int]:
    """(window_length, stride) for texts longer than `max_length` (None: not known yet, MAX_TOKENS).

    Default window: DEFAULT_WINDOW tokens, at most max_length; default stride: a quarter of the window.
    check_windows(256, None, None) -> (128, 32); check_windows(64, None, None) -> (64, 16)
    """
    limit = max_length or MAX_TOKENS
    if window_length is None:
        window_length = min(DEFAULT_WINDOW, limit)
    check_range("--window-length", window_length, MIN_TOKENS, limit,
                why="it may not exceed --max-length, the model's window" if max_length else "")
    stride = window_length // 4 if stride is None else stride
    check_range("--stride", stride, 0, window_length - 1, why="windows must move forward")
    return window_length, stride


def check_k(k: int, high: int = MAX_K) -> int:
    return check_range("-k", k, 1, high)

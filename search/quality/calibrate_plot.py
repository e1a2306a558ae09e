"""Draw a calibration: the top-score distributions of out-of-scope and in-scope examples, and the cut.

Needs matplotlib (the `test` and `tutorial` extras), imported only when a plot is asked for; drawn
off-screen (Agg) to a PNG. This module chooses nothing: see `search.quality.calibrate`.
"""

from __future__ import annotations

import math
from pathlib import Path

from indexer.errors import BertdexError
from search.quality.calibrate import Calibration

BINS = 30


def plot_calibration(result: Calibration, path: str | Path) -> Path:
    """Histograms of the examples' top scores (out of scope; in scope, top answer right; in scope, wrong)
    with the chosen cut as a vertical line. Returns the PNG's path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BertdexError(f"--plot {path}: give a .png file name")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BertdexError("--plot needs matplotlib: pip install matplotlib (or the project's `tutorial` extra)") from None
    groups = _groups(result)
    finite = [score for scores in groups.values() for score in scores]
    if not finite:
        raise BertdexError("--plot: no example got any answer: nothing to draw")
    low, high = min(finite + [result.min_score]), max(finite + [result.min_score])
    bins = [low + (high - low) * i / BINS for i in range(BINS + 1)] if high > low else BINS
    figure, axes = plt.subplots(figsize=(8, 4.5))
    colours = {"out of scope": "tab:red", "in scope, top answer right": "tab:green",
               "in scope, top answer wrong": "tab:orange"}
    for label, scores in groups.items():
        if scores:
            axes.hist(scores, bins=bins, alpha=0.55, label=f"{label} ({len(scores)})", color=colours[label])
    axes.axvline(result.min_score, color="black", linestyle="--", label=f"cut {result.min_score:.4f}")
    axes.set_xlabel(f"top score ({result.mode})")
    axes.set_ylabel("questions")
    axes.set_title(f"{Path(result.folder).name}: answered at or above the cut (precision {result.precision:.2f})")
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise BertdexError(f"--plot {path}: {error.strerror or error}") from None
    finally:
        plt.close(figure)
    return path


def _groups(result: Calibration) -> dict[str, list[float]]:
    groups = {"out of scope": [], "in scope, top answer right": [], "in scope, top answer wrong": []}
    for position, (score, right) in enumerate(result.examples):
        if not math.isfinite(score):
            continue
        if position < result.out_of_scope:
            groups["out of scope"].append(score)
        else:
            groups["in scope, top answer right" if right else "in scope, top answer wrong"].append(score)
    return groups

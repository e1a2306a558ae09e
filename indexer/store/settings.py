"""An index's settings, typed: how its entries were read and windowed, and how it answers questions.

The defaults live here and nowhere else (dense search, hybrid weight 0.5, score fusion, no cut).
Both classes are frozen; change one with `dataclasses.replace`. `from_dict` reads the manifest's
JSON, including manifests written before these classes existed (missing keys take the defaults,
unknown keys are ignored). This module stores nothing and knows nothing about models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

SEARCH_MODES = ("dense", "keyword", "hybrid")
LONG_QUESTIONS = ("tail", "windows")


@dataclass(frozen=True)
class SearchSettings:
    """How the index answers: mode, hybrid weight and fusion, the calibrated cut, and how they were chosen.

    `tuned` and `calibration` are the reports of `bertdex tune` / `bertdex calibrate` (plain dicts), or None.
    `long_questions`: a question over the model's window is embedded by windows and scores each entry
    by its best window ("windows", the default: bench/long_questions.py), or keeps its last tokens ("tail").
    """

    mode: str = "dense"
    weight: float = 0.5
    fusion: str = "score"
    min_score: float | None = None
    calibration: dict | None = None
    tuned: dict | None = None
    long_questions: str = "windows"
    reason: str | None = None  # why a new index starts with this mode (indexer.ingest.build.starting_search)
    # where min_score came from: {"source": "collection", ...} (made at each commit from the shipped off-topic
    # sample, indexer.store.offtopic) or {"source": "calibrated", "labelled": n, ...} (bertdex calibrate); None: no cut
    cut: dict | None = None

    @property
    def calibrated(self) -> bool:
        """Whether min_score was set from examples (calibrate), so a commit must leave it as it is."""
        return self.calibration is not None or (self.cut or {}).get("source") == "calibrated"

    def cut_source(self) -> str | None:
        """"from the collection" / "calibrated on N labelled" / None (no cut).

        SearchSettings(min_score=.4, cut={"source": "collection"}).cut_source() -> 'from the collection'
        """
        if self.min_score is None:
            return None
        if self.calibrated:
            done = self.calibration or {}
            examples = (self.cut or {}).get("labelled", done.get("in_scope", 0) + done.get("out_of_scope", 0))
            return f"calibrated on {examples} labelled"
        if (self.cut or {}).get("source") == "collection":
            return "from the collection"
        return "set by hand"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "SearchSettings":
        data = {name: value for name, value in (data or {}).items() if name in _names(cls) and value is not None}
        return cls(**data)


@dataclass(frozen=True)
class IndexSettings:
    """How entries were read (fields) and cut into windows, and the search settings.

    `window_length`: tokens per window of a text longer than the model's max_length (None: max_length).
    """

    text_fields: tuple[str, ...] = ()
    id_field: str | None = None
    group_field: str | None = None
    window: bool = True
    window_length: int | None = None
    stride: int = 0
    format: str | None = None
    delimiter: str | None = None          # CSV delimiter given or sniffed at build
    keyword_terms: str | None = None      # the FTS5 term scheme (indexer.store.keywords); None: the first, bigrams
    model_reason: str | None = None       # why the index has its model (the language rule, or --model)
    loading: dict | None = None           # an unfinished bulk load (indexer.ingest.bulk), None when none
    adapted: dict | None = None           # the adapted model's provenance (indexer.embed.adapted.Adaptation)
    search: SearchSettings = field(default_factory=SearchSettings)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["text_fields"] = list(self.text_fields)
        data["search"] = self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> "IndexSettings":
        data = dict(data or {})
        values = {name: data[name] for name in _names(cls) if name in data and name != "search"}
        values["text_fields"] = tuple(values.get("text_fields") or ())
        if values.get("stride") is None:
            values.pop("stride", None)
        if values.get("window") is None:
            values.pop("window", None)
        return cls(**values, search=SearchSettings.from_dict(data.get("search")))


def as_index_settings(value: "IndexSettings | dict | None") -> IndexSettings:
    """IndexSettings from either form (a Manifest built by older code or tests passes a dict)."""
    return value if isinstance(value, IndexSettings) else IndexSettings.from_dict(value)


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}

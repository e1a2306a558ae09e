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


KOREAN_SHARE = 0.2  # of a new index's first entries with Hangul, for a hybrid start


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
    reason: str | None = None  # why a new index starts with this mode (see for_texts)

    @classmethod
    def for_texts(cls, texts) -> "SearchSettings":
        """The starting mode for a new index whose first entries are `texts`: hybrid (score fusion, 0.5)
        when at least KOREAN_SHARE of them have Hangul, else dense.

        Korean questions reuse the entries' morphemes (Kiwi keyword terms), and keywords add to the vectors
        there: ko-question-pair MRR@10 dense 0.709, keyword 0.651, hybrid 0.737 on multilingual-e5-small
        (with all-MiniLM-L6-v2: 0.246 / 0.608 / 0.534), while on the English sets hybrid at 0.5 ties or
        loses to dense (bertfaq-covidfaq 0.723 against 0.788; bench/quality.py). `bertdex tune` moves either.
        """
        sample = [t for t in list(texts)[:2000] if any(ch.isalpha() for ch in t)]
        korean = sum(any("\uac00" <= ch <= "\ud7a3" for ch in t) for t in sample) / len(sample) if sample else 0
        if korean >= KOREAN_SHARE:
            return cls(mode="hybrid", reason=f"{korean:.0%} of the entries are Korean: keywords (Kiwi morphemes) "
                                             "add to the vectors there (ko-question-pair MRR@10 0.737 hybrid, 0.709 dense)")
        return cls(reason="dense: the vectors alone answer English best (hybrid ties or loses on the English sets)")

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

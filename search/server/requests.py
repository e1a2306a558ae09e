"""The shapes of request bodies the service accepts, with their limits; pydantic checks them before a route runs.

This module only declares; the routes (search.server.app) act on what passes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from indexer.ingest.entries import HTTP_TEXT_CHARS, MAX_KEY_CHARS

MAX_QUESTION_CHARS = 2_000
MAX_QUESTIONS = 32
MAX_K = 100
MAX_DOCUMENTS = 100
MAX_TEXT_CHARS = HTTP_TEXT_CHARS  # checked again after NFKC (app.entries_from): normalization can expand a text
MAX_FIELDS = 32

Question = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUESTION_CHARS)]
Key = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_KEY_CHARS,
                                       pattern=r"^[^\x00-\x1f\x7f]+$")]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS, pattern=r"^[^\x00]+$")]
Scalar = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | int | Annotated[float, Field(allow_inf_nan=False)] | bool | None


class SearchRequest(BaseModel):
    """One question or a list; the answers come back in the same order."""

    model_config = ConfigDict(extra="forbid")
    question: Question | Annotated[list[Question], Field(min_length=1, max_length=MAX_QUESTIONS)]
    k: int = Field(5, ge=1, le=MAX_K, description="Answers per question.")
    mode: Literal["dense", "keyword", "hybrid"] | None = Field(None, description="Default: the index's tuned mode.")
    min_score: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        None, description="Drop answers below it. Omitted: the index's calibrated cut (if any); null: no cut at all.")
    weight: float | None = Field(None, ge=0, le=1, description="Hybrid: the dense side's share.")
    filters: dict[FieldName, Scalar] = Field(default_factory=dict, max_length=16, description="Stored field -> value.")
    highlight: bool = Field(False, description="Add each hit's matched-word ranges (`highlights`) and variant texts.")


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Key
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
    fields: dict[FieldName, Scalar] = Field(default_factory=dict, max_length=MAX_FIELDS)
    group: Key | None = None


class DocumentsRequest(BaseModel):
    """Entries to add, or to replace by key, in one commit."""

    model_config = ConfigDict(extra="forbid")
    documents: list[Document] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class FeedbackRequest(BaseModel):
    """An agent's verdict on one answer to one question."""

    model_config = ConfigDict(extra="forbid")
    question: Question
    key: Key = Field(description="The answer's entry key.")
    verdict: Literal["up", "down", "right"] = Field(
        description="up: a good answer; down: a wrong one; right: this lower answer was the right one.")
    rank: int | None = Field(None, ge=1, le=MAX_K, description="Where the answer was shown.")
    score: Annotated[float, Field(allow_inf_nan=False)] | None = None
    query_id: int | None = Field(None, ge=1, description="The `query_id` the search returned, linking the log.")

"""Streaming entries through an embedder into the writer, with checkpoints that make big loads resumable.

A load of more than `checkpoint` entries commits every `checkpoint` entries (each an ordinary
atomic commit) and records a run marker in the manifest (settings["loading"]: the command, its
source file's identity and a hash of its options). Run again with the same command, a load whose
marker matches resumes: entries already committed with the same content hash are skipped, not
re-embedded, so the end result equals an uninterrupted run. The last commit removes the marker.
Embedding is pluggable (`InProcess` here, `indexer.ingest.distributed.RayEmbedder` on Ray): an
embedder streams (payload, Embedded) back in the order the jobs went in. This module does not read
files (readers does) or decide types of index (store.ann does).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from indexer.errors import BertdexError
from indexer.ingest.readers import Entry
from indexer.store.folder import IndexWriter, Manifest, content_hash

CHECKPOINT = 50_000  # entries between commits of a load larger than this (about a minute of embedding on 2 cores)
Progress = Callable[[int, int], None]


def embed_options(manifest: Manifest) -> dict:
    """The keyword arguments of Encoder.embed for an index: its recipe and window settings."""
    recipe, settings = manifest.recipe, manifest.settings
    return {"layer": recipe.layer, "pooling": recipe.pooling, "exclude_special": recipe.exclude_special,
            "windows": settings.window, "stride": settings.stride, "window_length": settings.window_length,
            "prefix": recipe.passage_prefix}


class InProcess:
    """The encoder of this process: each job embedded as it comes."""

    def __init__(self, encoder, options: dict):
        self.encoder, self.options = encoder, options
        self.label = encoder.path.label()

    def stream(self, jobs: Iterable[tuple[object, list[str]]]) -> Iterator[tuple[object, object]]:
        for payload, texts in jobs:
            yield payload, (self.encoder.embed(texts, **self.options) if texts else None)

    def close(self) -> None:
        pass


def run_marker(op: str, data: Path, options: dict) -> dict:
    """What identifies a load: the command, the input file (path, size, mtime) and its options."""
    path = Path(data).resolve()
    stat = os.stat(path)
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"op": op, "source": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "options": digest}


def same_load(marker: dict | None, other: dict) -> bool:
    return bool(marker) and all(marker.get(name) == other[name] for name in ("op", "source", "bytes", "mtime_ns", "options"))


def describe(marker: dict) -> str:
    return f"`bertdex {marker.get('op')}` of {marker.get('source')} (started {marker.get('started', '?')})"


def ingest(writer: IndexWriter, embedder, entries: Iterable[Entry], total: int, *, progress: Progress | None,
           chunk_size: int, checkpoint: int, marker: dict | None) -> dict:
    """Upsert `entries` in chunks; commit every `checkpoint` entries when `marker` is given (a bulk load).

    Chunks are planned (unchanged entries dropped) ahead of the writer, so an embedder may work on
    several at once; the writer takes them back in input order. Returns the counts of the whole load.
    """
    totals = {"added": 0, "updated": 0, "unchanged": 0, "truncated": 0, "split": 0, "split_texts": 0}
    if marker is not None:
        _set_loading(writer, marker)
        chunk_size = min(chunk_size, checkpoint)  # a checkpoint falls on a chunk's end
    done = since = 0
    for (seen, changed, news), embedded in embedder.stream(_plans(writer, entries, chunk_size, totals)):
        if changed:
            documents = [{"key": e.key, "text": e.text, "fields": e.fields, "group": e.group} for e in changed]
            writer.note_encoder(embedder.label)
            writer.write_documents(documents, embedded.vectors, embedded.owners, embedded.spans)
            totals["truncated"] += embedded.truncated
            totals["split"] += len(embedded.owners) - len(set(embedded.owners.tolist()))
            totals["split_texts"] += int((np.bincount(embedded.owners) > 1).sum()) if len(embedded.owners) else 0
        totals["added"] += news
        totals["updated"] += len(changed) - news
        done, since = done + seen, since + seen
        if marker is not None and since >= checkpoint and done < total:
            writer.commit()
            since = 0
        if progress:
            progress(done, total)
    if marker is not None:
        _set_loading(writer, None)
    return totals


def _plans(writer: IndexWriter, entries: Iterable[Entry], chunk_size: int, totals: dict):
    """(entries seen, changed entries, how many are new) per chunk, with the texts to embed."""
    chunk: list[Entry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) >= chunk_size:
            yield _plan(writer, chunk, totals)
            chunk = []
    if chunk:
        yield _plan(writer, chunk, totals)


def _plan(writer: IndexWriter, chunk: list[Entry], totals: dict):
    old = writer.existing([e.key for e in chunk])
    changed = [e for e in chunk if e.key not in old or old[e.key][1] != content_hash(e.text, e.fields, e.group)]
    totals["unchanged"] += len(chunk) - len(changed)
    news = sum(e.key not in old for e in changed)
    return (len(chunk), changed, news), [e.text for e in changed]


def _set_loading(writer: IndexWriter, marker: dict | None) -> None:
    manifest = writer.manifest
    writer.set_manifest(replace(manifest, settings=replace(manifest.settings, loading=marker)))


def check_resume(existing: Manifest | None, marker: dict, replace: bool, folder: Path, hint: str) -> bool:
    """True when `folder` holds an interrupted load of this same command: continue it, do not replace.

    An interrupted load of something else is refused, unless `replace` starts over."""
    loading = existing.settings.loading if existing else None
    if same_load(loading, marker):
        return True
    if loading and not replace:
        raise BertdexError(f"{folder} holds an interrupted {describe(loading)}: run that command again to "
                           f"finish it, {hint}")
    return False

"""Build and update an index: read entries -> embed the new and changed ones -> one commit.

The input is read twice: a first pass checks every row (so `--on-error fail` refuses before
anything is embedded or written) and counts them; the second streams chunks through the encoder
(in this process, or on Ray with `ray=`) into the writer (indexer.ingest.bulk). Memory holds a few
chunks of texts, plus the vectors themselves. A load of more than `checkpoint` entries commits every
`checkpoint` entries and resumes where it stopped when run again (see indexer.ingest.bulk).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from indexer.store.ann import check_index_type
from indexer.embed.encoder import Encoder
from indexer.errors import BertdexError
from indexer.embed.models import DEFAULT_MODEL
from indexer.ingest.bulk import CHECKPOINT, InProcess, check_resume, embed_options, ingest, run_marker
from indexer.ingest.readers import Entry, Fields, Problem, read_entries
from indexer.embed.resolve import Resolved, encoder_for, resolve_recipe
from indexer.store.folder import (DB_NAME, IndexWriter, Manifest, check_index_folder, connect, content_hash, now,
                                  read_manifest)

CHUNK = 2048
ON_ERROR = ("fail", "skip")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BuildReport:
    """What a build or update did. `problems` are the rows skipped (with --on-error skip)."""

    folder: str
    added: int
    updated: int
    unchanged: int
    deleted: int
    documents: int
    vectors: int
    truncated: int
    split: int
    seconds: float
    recipe_reason: str = ""
    problems: list[Problem] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.added + self.updated) / self.seconds if self.seconds else 0.0


def build_index(data: Path, folder: Path, *, text_fields: Iterable[str] = (), id_field: str | None = None,
                group_field: str | None = None, model: str = DEFAULT_MODEL, layer: int | None = None,
                pooling: str | None = None, exclude_special: bool = False, max_length: int | None = None,
                window: bool = True, window_length: int = 128, stride: int | None = None,
                replace: bool = False, on_error: str = "fail",
                fmt: str | None = None, precision: str = "auto", threads: int | None = None,
                backend: str = "auto", progress: Progress | None = None, chunk_size: int = CHUNK,
                resolved: Resolved | None = None, index_type: str = "auto", checkpoint: int = CHECKPOINT,
                ray: str | None = None, ray_workers: int | None = None, ray_gpus: float = 0) -> BuildReport:
    """Index the entries of `data` into a new folder (or rebuild one with `replace`).

    `resolved`: a recipe and encoder already loaded (then the model options are not used).
    `index_type`: auto, flat, hnsw, ivf, sq8 or ivfpq (see indexer.store.ann); auto picks by collection size
    at each commit. `checkpoint`: a load of more entries commits every `checkpoint` entries and, run again
    after a crash, resumes (even with `replace`: an interrupted load of the same file and options continues).
    `ray`: embed on Ray ("local": a Ray started for this run; "auto" or "ray://host:port": a cluster) with
    `ray_workers` actors (default: one per CPU of the cluster) of `ray_gpus` GPUs each.
    """
    started = time.perf_counter()
    check_index_type(index_type)  # before the input is read or a model loaded
    fields = Fields(tuple(text_fields), id_field, group_field)
    entries_total, problems = _check_input(data, fields, fmt, on_error)
    resolved = resolved or resolve_recipe(model, layer=layer, pooling=pooling, exclude_special=exclude_special,
                                          max_length=max_length, precision=precision, threads=threads,
                                          backend=backend)
    window_length = min(window_length, resolved.recipe.max_length)
    stride = window_length // 4 if stride is None else stride
    settings = {"text_fields": list(fields.text), "id_field": id_field, "group_field": group_field,
                "window": window, "window_length": window_length, "stride": stride, "format": fmt}
    manifest = Manifest(recipe=resolved.recipe, settings=settings, index_type=check_index_type(index_type))
    marker, resume = None, False
    if entries_total > checkpoint:
        options = {"settings": settings, "index_type": index_type, "recipe": resolved.recipe.to_dict()}
        marker = run_marker("index", data, options)
        existing = _existing_manifest(Path(folder))
        resume = check_resume(existing, marker, replace, folder, "add --replace to start over")
        marker = existing.settings["loading"] if resume else {**marker, "started": now()}
    with IndexWriter.open(Path(folder), new=manifest, replace=replace and not resume) as writer:
        if writer.manifest.documents and not replace and not resume:
            raise BertdexError(f"{folder} already holds an index: use `bertdex add` to update it, or --replace to rebuild it")
        with _embedder(resolved.encoder, writer.manifest, ray, ray_workers, ray_gpus) as embedder:
            counts = ingest(writer, embedder, _entries(data, fields, fmt), entries_total, progress=progress,
                            chunk_size=chunk_size, checkpoint=checkpoint, marker=marker)
        final = writer.commit()
    return _report(folder, counts, final, started, problems, resolved.reason)


def add_documents(folder: Path, data: Path, *, text_fields: Iterable[str] = (), id_field: str | None = None,
                  group_field: str | None = None, on_error: str = "fail", fmt: str | None = None,
                  precision: str = "auto", threads: int | None = None, backend: str = "auto",
                  progress: Progress | None = None, chunk_size: int = CHUNK,
                  encoder: Encoder | None = None, checkpoint: int = CHECKPOINT, ray: str | None = None,
                  ray_workers: int | None = None, ray_gpus: float = 0) -> BuildReport:
    """Add or update entries by key: unchanged ones cost nothing, changed ones are re-embedded.

    `checkpoint`, `ray*`: as for build_index (an add is resumable by nature: committed entries are unchanged)."""
    started = time.perf_counter()
    folder = check_index_folder(Path(folder))
    manifest = read_manifest(connect(folder, readonly=True), folder)
    settings = manifest.settings
    fields = Fields(tuple(text_fields) or tuple(settings.get("text_fields") or ()),
                    id_field or settings.get("id_field"), group_field or settings.get("group_field"))
    entries_total, problems = _check_input(data, fields, fmt or settings.get("format"), on_error)
    marker = None
    if entries_total > checkpoint:
        marker = run_marker("add", data, {"fields": list(fields.text), "id": fields.key, "group": fields.group,
                                          "format": fmt or settings.get("format")})
        resume = check_resume(manifest, marker, False, folder, "or `bertdex index --replace` to start over")
        marker = manifest.settings["loading"] if resume else {**marker, "started": now()}
    encoder = encoder or encoder_for(manifest.recipe, precision=precision, threads=threads, backend=backend)
    with IndexWriter.open(folder) as writer:
        with _embedder(encoder, writer.manifest, ray, ray_workers, ray_gpus) as embedder:
            counts = ingest(writer, embedder, _entries(data, fields, fmt or settings.get("format")), entries_total,
                            progress=progress, chunk_size=chunk_size, checkpoint=checkpoint, marker=marker)
        final = writer.commit()
    return _report(folder, counts, final, started, problems)


def upsert_entries(writer: IndexWriter, encoder: Encoder, entries: list[Entry]) -> dict:
    """Write `entries` through `writer`: skip unchanged, embed new and changed. Returns counts."""
    old = writer.existing([e.key for e in entries])
    changed = [e for e in entries if e.key not in old or old[e.key][1] != content_hash(e.text, e.fields, e.group)]
    counts = {"added": sum(e.key not in old for e in changed), "updated": sum(e.key in old for e in changed),
              "unchanged": len(entries) - len(changed), "truncated": 0, "split": 0}
    if not changed:
        return counts
    embedded = encoder.embed([e.text for e in changed], **embed_options(writer.manifest))
    documents = [{"key": e.key, "text": e.text, "fields": e.fields, "group": e.group} for e in changed]
    writer.write_documents(documents, embedded.vectors, embedded.owners, embedded.spans)
    counts["truncated"] = embedded.truncated
    counts["split"] = len(embedded.owners) - len(set(embedded.owners.tolist()))
    return counts


def delete_documents(folder: Path, keys: list[str]) -> tuple[int, list[str]]:
    """Remove entries by key in one commit: (how many were removed, the keys that were not there)."""
    folder = check_index_folder(Path(folder))
    with IndexWriter.open(folder) as writer:
        missing = writer.delete(list(dict.fromkeys(keys)))
        writer.commit()
    return len(set(keys)) - len(set(missing)), missing


def _check_input(data: Path, fields: Fields, fmt: str | None, on_error: str) -> tuple[int, list[Problem]]:
    """First pass: count entries, collect problems, refuse at the first with on_error='fail'."""
    if on_error not in ON_ERROR:
        raise BertdexError(f"unknown --on-error {on_error!r}: choose fail or skip")
    count, problems = 0, []
    for item in read_entries(Path(data), fields, fmt):
        if isinstance(item, Problem):
            if on_error == "fail":
                raise BertdexError(f"{item} (nothing was written; --on-error skip leaves such rows out)")
            problems.append(item)
        else:
            count += 1
    if count == 0:
        raise BertdexError(f"{data}: no entries to index" + (f" ({len(problems)} rows skipped)" if problems else ""))
    return count, problems


def _entries(data: Path, fields: Fields, fmt: str | None):
    return (item for item in read_entries(Path(data), fields, fmt) if isinstance(item, Entry))


def _existing_manifest(folder: Path) -> Manifest | None:
    """The manifest of the index in `folder`, or None when there is none (yet)."""
    if not (folder / DB_NAME).is_file():
        return None
    db = connect(folder, readonly=True)
    try:
        return read_manifest(db, folder)
    except BertdexError:
        return None
    finally:
        db.close()


@contextmanager
def _embedder(encoder: Encoder, manifest: Manifest, ray: str | None, workers: int | None, gpus: float):
    """This process's encoder, or a pool of Ray actors holding the same one (indexer.ingest.distributed)."""
    if ray is None:
        embedder = InProcess(encoder, embed_options(manifest))
    else:
        from indexer.ingest.distributed import RayEmbedder

        embedder = RayEmbedder(encoder, manifest.recipe, embed_options(manifest), address=ray, workers=workers,
                               gpus=gpus)
    try:
        yield embedder
    finally:
        embedder.close()


def _report(folder, counts: dict, manifest: Manifest, started: float, problems: list[Problem], reason: str = "") -> BuildReport:
    return BuildReport(
        folder=str(folder), added=counts["added"], updated=counts["updated"], unchanged=counts["unchanged"],
        deleted=counts.get("deleted", 0), documents=manifest.documents, vectors=manifest.vectors,
        truncated=counts["truncated"], split=counts["split"], seconds=time.perf_counter() - started,
        recipe_reason=reason, problems=problems,
    )

"""Build and update an index: read entries -> embed the new and changed ones -> one commit.

The input is read twice: a first pass checks every row (so `--on-error fail` refuses before
anything is embedded or written) and counts them; the second streams chunks through the encoder
into the writer. Memory holds one chunk of texts, plus the vectors themselves.
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.store.ann import check_index_type
from indexer.embed.encoder import Encoder
from indexer.options import MAX_TOKENS, check_max_length, check_windows
from indexer.errors import BertdexError
from indexer.embed.models import LANGUAGE_SAMPLE, NON_ENGLISH_SHARE, model_choice, share_of
from indexer.ingest.bulk import CHECKPOINT, InProcess, check_resume, embed_options, ingest, run_marker
from indexer.ingest.cut import ensure_sample
from indexer.ingest.embedding import embed_entries
from indexer.ingest.entries import check_keys
from indexer.ingest.readers import Entry, Fields, Problem, chosen_fields, read_entries
from indexer.embed.resolve import Resolved, encoder_for, resolve_recipe, with_companion
from indexer.embed.projection import follows_map
from indexer.store.keywords import NEW_INDEX_SCHEME, hangul_syllable
from indexer.store.folder import (DB_NAME, IndexWriter, Manifest, check_index_folder, connect, content_hash, now,
                                  open_manifest, read_manifest)
from indexer.store.settings import IndexSettings, SearchSettings
from indexer.store.streamed import streams

EMBED_BATCH = 128  # entries per encoder call inside a chunk: the progress bar moves this often
CHUNK = EMBED_BATCH  # entries planned, embedded and written at once (a Ray job); progress moves per chunk
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
    warnings: list[str] = field(default_factory=list)  # what the writer left undone, e.g. stale files it could not prove stale
    split_texts: int = 0     # texts over max_length tokens, cut into windows of window_length (split more vectors)
    max_length: int = 0
    window_length: int = 0
    committed: bool = True  # False: nothing changed, so nothing was written (the generation stays)

    @property
    def rate(self) -> float:
        return (self.added + self.updated) / self.seconds if self.seconds else 0.0


KOREAN_WEIGHT = 0.6  # a Korean index starts hybrid with this dense share where both sides agree (bench/plain.py)
KOREAN_FUSION = "agreement"  # ... and at least search.keyword.DISAGREE_WEIGHT (0.8) where they do not


def starting_search(texts) -> SearchSettings:
    """The search mode a new index whose first entries are `texts` starts in: hybrid (agreement fusion,
    dense weight 0.6) when at least NON_ENGLISH_SHARE of them have Hangul, else dense.

    Agreement fusion (search.keyword.fuse) is score fusion at 0.6 on a question whose keyword side ranks
    first an entry the vectors rank in their first 3, and at 0.8 on one whose keyword favourite the vectors
    do not rank near the top. Measured with no labels (bench/plain.py, MRR@10, multilingual-e5-small): within
    0.005 of the best single mode (dense, keyword, hybrid 0.5) on every Korean set, the held-out ones
    (ko-question-pair's train split, KorSTS) included, and at least as good as the plain 0.8 of before on each
    (ko-question-pair 0.735 against 0.731; the Korean example FAQ 0.750 against 0.743, with answers 0.958
    both), where no single weight of score fusion was: 0.5 and 0.7 lose the example FAQ with its answers
    (0.861 against dense 0.958), 0.8 loses ko-question-pair (0.731 against hybrid 0.5's 0.739). On the English
    sets hybrid ties or loses to dense at every weight, so English starts dense. `bertdex tune` moves either.
    """
    korean = share_of(texts, hangul_syllable) or 0.0
    if korean >= NON_ENGLISH_SHARE:
        return SearchSettings(mode="hybrid", weight=KOREAN_WEIGHT, fusion=KOREAN_FUSION,
                              reason=f"{korean:.0%} of the entries are Korean: keywords (Kiwi morphemes) add to the "
                                     "vectors there, at a dense share of 0.6 where the keyword side's first hit is "
                                     "among the vectors' first 3 and of 0.8 where it is not (bench/plain.py: within "
                                     "0.005 of the best single mode on every Korean set)")
    return SearchSettings(reason="dense: the vectors alone answer English best (hybrid ties or loses on the English sets)")


def build_index(data: Path, folder: Path, *, text_fields: Iterable[str] = (), id_field: str | None = None,
                group_field: str | None = None, model: str | None = None, layer: int | None = None,
                pooling: str | None = None, exclude_special: bool = False, max_length: int | None = None,
                window: bool = True, window_length: int | None = None, stride: int | None = None,
                replace: bool = False, on_error: str = "fail",
                fmt: str | None = None, precision: str = "auto", threads: int | None = None,
                backend: str = "auto", progress: Progress | None = None, chunk_size: int = CHUNK,
                resolved: Resolved | None = None, index_type: str = "auto", delimiter: str | None = None,
                checkpoint: int = CHECKPOINT, ray: str | None = None, ray_workers: int | None = None,
                ray_gpus: float = 0, companion: str | None = None, companion_share: float = 0.5) -> BuildReport:
    """Index the entries of `data` into a new folder (or rebuild one with `replace`).

    `window_length`, `stride`: see indexer.options.check_windows (out of range: OptionOutOfRange).
    `resolved`: a recipe and encoder already loaded (then the model options are not used).
    `index_type`: auto, flat, hnsw, ivf, sq8 or ivfpq (see indexer.store.ann); auto picks by collection size
    at each commit. `checkpoint`: a load of more entries commits every `checkpoint` entries and, run again
    after a crash, resumes (even with `replace`: an interrupted load of the same file and options continues).
    `ray`: embed on Ray ("local": a Ray started for this run; "auto" or "ray://host:port": a cluster) with
    `ray_workers` actors (default: one per CPU of the cluster) of `ray_gpus` GPUs each.
    `progress(done, total)`: called once the input is checked (0 done, before the model loads), then per batch.
    `companion`: a second model scoring with the first (`companion_share` of each score; indexer.embed.pair).
    """
    started = time.perf_counter()
    check_index_type(index_type)  # before the input is read or a model loaded
    check_max_length(max_length)
    check_windows(max_length, window_length, stride)
    source = _Source(Path(data), fmt, delimiter)
    fields = chosen_fields(source.path, Fields(tuple(text_fields), id_field, group_field), fmt, delimiter)
    sample: list[str] = []
    entries_total, problems = _check_input(source, fields, on_error, progress, sample)
    model, model_reason = (model, "chosen with --model") if model else model_choice(sample)
    resolved = resolved or resolve_recipe(model, layer=layer, pooling=pooling, exclude_special=exclude_special,
                                          max_length=max_length, precision=precision, threads=threads,
                                          backend=backend)
    check_max_length(max_length, getattr(resolved.encoder, "model_max_length", MAX_TOKENS))  # never cut silently
    if companion is not None:
        resolved = with_companion(resolved, companion, companion_share, precision=precision, threads=threads,
                                  backend=backend)
    window_length, stride = check_windows(resolved.recipe.max_length, window_length, stride)
    # the text fields as chosen (named or found), so `info` and `add` see what was embedded
    settings = IndexSettings(text_fields=fields.text, id_field=id_field, group_field=group_field, window=window,
                             window_length=window_length, stride=stride, format=fmt, delimiter=delimiter,
                             keyword_terms=NEW_INDEX_SCHEME,
                             model_reason=model_reason if resolved.recipe.model == model else "given by the caller",
                             search=starting_search(sample))
    manifest = Manifest(recipe=resolved.recipe, settings=settings, index_type=check_index_type(index_type))
    marker, resume = None, False
    if entries_total > checkpoint:
        options = {"settings": settings.to_dict(), "index_type": index_type, "recipe": resolved.recipe.to_dict()}
        marker = run_marker("index", source.path, options)
        existing = _existing_manifest(Path(folder))
        resume = check_resume(existing, marker, replace, folder, "add --replace to start over")
        marker = existing.settings.loading if resume else {**marker, "started": now()}
    stream = streams(index_type, entries_total, resolved.recipe.dimension)  # float32 vectors on disk, not in memory
    with IndexWriter.open(Path(folder), new=manifest, replace=replace and not resume, stream=stream) as writer:
        if writer.manifest.documents and not replace and not resume:
            raise BertdexError(f"{folder} already holds an index: use `bertdex add` to update it, or --replace to rebuild it")
        ensure_sample(writer, resolved.encoder, sample)  # each commit makes the "no good answer" cut from it
        with _embedder(resolved.encoder, writer.manifest, ray, ray_workers, ray_gpus) as embedder:
            counts = ingest(writer, embedder, _entries(source, fields), entries_total, progress=progress,
                            chunk_size=chunk_size, checkpoint=checkpoint, marker=marker)
        final = writer.commit()
    return _report(folder, counts, final, started, problems, f"model {resolved.recipe.describe()}: {settings.model_reason}; "
                   + resolved.reason + f"; search mode {settings.search.mode}: {settings.search.reason}", writer.warnings)


def add_documents(folder: Path, data: Path, *, text_fields: Iterable[str] = (), id_field: str | None = None,
                  group_field: str | None = None, on_error: str = "fail", fmt: str | None = None,
                  precision: str = "auto", threads: int | None = None, backend: str = "auto",
                  progress: Progress | None = None, chunk_size: int = CHUNK,
                  encoder: Encoder | None = None, delimiter: str | None = None, checkpoint: int = CHECKPOINT,
                  ray: str | None = None, ray_workers: int | None = None, ray_gpus: float = 0) -> BuildReport:
    """Add or update entries by key: unchanged ones cost nothing, changed ones are re-embedded.

    `checkpoint`, `ray*`: as for build_index (an add is resumable by nature: committed entries are unchanged)."""
    started = time.perf_counter()
    folder = check_index_folder(Path(folder))
    manifest = open_manifest(folder)  # its connection closed before the writer opens one
    settings = manifest.settings
    fields = Fields(tuple(text_fields) or settings.text_fields, id_field or settings.id_field,
                    group_field or settings.group_field)
    source = _Source(Path(data), fmt or settings.format, delimiter or settings.delimiter)
    entries_total, problems = _check_input(source, fields, on_error, progress)
    marker = None
    if entries_total > checkpoint:
        marker = run_marker("add", source.path, {"fields": list(fields.text), "id": fields.key, "group": fields.group,
                                                 "format": source.fmt})
        resume = check_resume(manifest, marker, False, folder, "or `bertdex index --replace` to start over")
        marker = manifest.settings.loading if resume else {**marker, "started": now()}
    with IndexWriter.open(folder) as writer:  # first: a locked, read-only or damaged index refuses before the model loads
        if writer.manifest.settings.loading is None and not _any_change(writer, _entries(source, fields)):
            # nothing to embed: no model loaded, no commit
            counts = {"added": 0, "updated": 0, "unchanged": entries_total, "truncated": 0, "split": 0}
            if progress:
                progress(entries_total, entries_total)
            final = writer.commit()
            return _report(folder, counts, final, started, problems, warnings=writer.warnings,
                           committed=writer.commits > 0)
        if encoder is None or not follows_map(encoder, writer.manifest.recipe):  # a learned map the given one lacks
            encoder = encoder_for(writer.manifest.recipe, precision=precision, threads=threads, backend=backend)
        ensure_sample(writer, encoder)  # an index from before the collection-made cut gets its sample
        with _embedder(encoder, writer.manifest, ray, ray_workers, ray_gpus) as embedder:
            counts = ingest(writer, embedder, _entries(source, fields), entries_total, progress=progress,
                            chunk_size=chunk_size, checkpoint=checkpoint, marker=marker)
        final = writer.commit()
    return _report(folder, counts, final, started, problems, warnings=writer.warnings, committed=writer.commits > 0)


def upsert_entries(writer: IndexWriter, encoder: Encoder, entries: list[Entry],
                   progress: Callable[[int], None] | None = None) -> dict:
    """Write `entries` through `writer`: skip unchanged, embed new and changed. Returns counts.

    `progress(done)`: entries of this list handled so far, after the unchanged ones and after each batch.
    """
    recipe, settings = writer.manifest.recipe, writer.manifest.settings
    old = writer.existing([e.key for e in entries])
    changed = [e for e in entries if e.key not in old or old[e.key][1] != content_hash(e.text, e.fields, e.group)]
    counts = {"added": sum(e.key not in old for e in changed), "updated": sum(e.key in old for e in changed),
              "unchanged": len(entries) - len(changed), "truncated": 0, "split": 0, "split_texts": 0}
    done = counts["unchanged"]
    if progress and done:
        progress(done)
    for start in range(0, len(changed), EMBED_BATCH):
        batch = changed[start:start + EMBED_BATCH]
        embedded = embed_entries(encoder, recipe, settings, [e.text for e in batch])
        documents = [{"key": e.key, "text": e.text, "fields": e.fields, "group": e.group} for e in batch]
        writer.note_encoder(encoder.path.label())
        writer.write_documents(documents, embedded.of(recipe.layer, recipe.pooling), embedded.owners, embedded.spans)
        counts["truncated"] += embedded.truncated
        counts["split"] += len(embedded.owners) - len(set(embedded.owners.tolist()))
        counts["split_texts"] += int((np.bincount(embedded.owners) > 1).sum()) if len(embedded.owners) else 0
        done += len(batch)
        if progress:
            progress(done)
    return counts


def _any_change(writer: IndexWriter, entries: Iterable[Entry], chunk: int = 500) -> bool:
    """Does any entry add a key or change a stored one? Stops at the first that does."""
    batch: list[Entry] = []
    for entry in itertools.chain(entries, [None]):
        if entry is not None:
            batch.append(entry)
        if batch and (entry is None or len(batch) >= chunk):
            old = writer.existing([e.key for e in batch])
            if any(e.key not in old or old[e.key][1] != content_hash(e.text, e.fields, e.group) for e in batch):
                return True
            batch = []
    return False


def delete_documents(folder: Path, keys: list[str]) -> tuple[int, list[str]]:
    """Remove entries by key in one commit: (how many were removed, the keys that were not there)."""
    keys = check_keys(keys)
    folder = check_index_folder(Path(folder))
    with IndexWriter.open(folder) as writer:
        missing = writer.delete(list(dict.fromkeys(keys)))
        writer.commit()  # commits nothing when no key was there
    return len(set(keys)) - len(set(missing)), missing


@dataclass(frozen=True)
class _Source:
    path: Path
    fmt: str | None
    delimiter: str | None

    def entries(self, fields: Fields):
        return read_entries(self.path, fields, self.fmt, self.delimiter)


def _check_input(source: _Source, fields: Fields, on_error: str, progress: Progress | None,
                 sample: list[str] | None = None) -> tuple[int, list[Problem]]:
    """First pass: count entries, collect problems, refuse at the first with on_error='fail'.

    `sample`: filled with the first texts (what the default model is chosen on).
    """
    if on_error not in ON_ERROR:
        raise BertdexError(f"unknown --on-error {on_error!r}: choose fail or skip")
    count, problems = 0, []
    for item in source.entries(fields):
        if isinstance(item, Problem):
            if on_error == "fail":
                raise BertdexError(f"{item} (nothing was written; --on-error skip leaves such rows out)")
            problems.append(item)
        else:
            count += 1
            if sample is not None and len(sample) < LANGUAGE_SAMPLE:
                sample.append(item.text)
    if count == 0:
        raise BertdexError(f"{source.path}: no entries to index" + (f" ({len(problems)} rows skipped)" if problems else ""))
    if progress:
        progress(0, count)
    return count, problems


def _entries(source: _Source, fields: Fields):
    return (item for item in source.entries(fields) if isinstance(item, Entry))


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


def _report(folder, counts: dict, manifest: Manifest, started: float, problems: list[Problem], reason: str = "",
            warnings: list[str] = (), committed: bool = True) -> BuildReport:
    return BuildReport(
        folder=str(folder), added=counts["added"], updated=counts["updated"], unchanged=counts["unchanged"],
        deleted=counts.get("deleted", 0), documents=manifest.documents, vectors=manifest.vectors,
        truncated=counts["truncated"], split=counts["split"], seconds=time.perf_counter() - started,
        recipe_reason=reason, problems=problems, warnings=list(warnings), split_texts=counts.get("split_texts", 0),
        max_length=manifest.recipe.max_length,
        window_length=manifest.settings.window_length or manifest.recipe.max_length, committed=committed,
    )

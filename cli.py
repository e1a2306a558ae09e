"""The `bertdex` command: typer options -> one library call -> print. No logic lives here.

People get rich tables; programs get JSON lines (--json), or rows (--nl, --csv, --tsv) where a
command lists things. The index folder comes first everywhere (`bertdex index DIR DATA`); `-` reads
stdin. A known failure becomes one line on stderr and its own exit status (indexer.failures: 1 bad
input, 2 usage, 3 unreadable input file, 4 no index, 5 locked, 6 read-only, 7 damaged index, ...);
so does a usage error (`main`).
"""

from __future__ import annotations

import functools
import shlex
import json
import re
import os
import sys
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, get_args, get_origin

import typer
import typer.core

# typer 0.29 prints a "<bool>" placeholder beside every flag, though a flag takes no value: show none
_shown_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _shown_type(self, ctx)


class _PlainValues(typer.core.RuntimeParam):
    """typer 0.29 checks every value with a pydantic TypeAdapter: importing pydantic and building one adapter per
    option was ~0.3-0.4 s of a cold `bertdex query` (0.5x the imports a question needs). Values of the plain types
    bertdex uses (str, int, float, Path, Enum choices, lists of them) are converted here as pydantic would convert
    them; anything else, and every value this cannot convert (so every error message), goes to typer's own adapter.
    """

    def _coerce_value(self, value, param, ctx):
        try:
            if isinstance(value, (list, tuple)) and get_origin(self.annotation) is list:
                item_type = get_args(self.annotation)[0]
                return [_plain_value(item, item_type, self.parameter_info, param, ctx) for item in value]
            return _plain_value(value, self.annotation, self.parameter_info, param, ctx)
        except _NotPlain:
            return _typer_runtime_param(_descriptor(self))._coerce_value(value, param, ctx)


class _NotPlain(Exception):
    pass


_NUMBER = {int: re.compile(r"[+-]?[0-9]+"), float: re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")}


def _plain_value(value, annotation, info, param, ctx):
    """The value typer's pydantic adapter would return for `value`, or _NotPlain where this is not sure of it."""
    from typer._param_types import coerce_cli_choice, coerce_cli_path

    if info.parser is not None or info.clamp:
        raise _NotPlain
    if annotation is str and isinstance(value, str):
        return value
    if annotation in _NUMBER:
        if not (type(value) in (int, annotation) or isinstance(value, str) and _NUMBER[annotation].fullmatch(value)):
            raise _NotPlain
        number = annotation(value)  # as pydantic: "007" -> 7, a float option's 3 -> 3.0
        if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
            raise _NotPlain  # out of range: typer's message
        return number
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return coerce_cli_choice(value, choices=list(annotation), case_sensitive=info.case_sensitive, ctx=ctx)
        except ValueError:
            raise _NotPlain from None
    if annotation is Path and info.path_type is None and isinstance(value, (str, Path)) and value != "":
        try:
            return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
        except Exception:  # a missing file, a folder for a file: typer's own message
            raise _NotPlain from None
    raise _NotPlain


def _descriptor(runtime: typer.core.RuntimeParam):
    return typer.core.TypeDescriptor(annotation=runtime.annotation, parameter_info=runtime.parameter_info,
                                     file_annotation=None)


def _plain_runtime_param(descriptor):
    if descriptor.file_annotation is not None:
        return _typer_runtime_param(descriptor)
    return _PlainValues(annotation=descriptor.annotation, parameter_info=descriptor.parameter_info)


_typer_runtime_param = typer.core.build_runtime_param
typer.core.build_runtime_param = _plain_runtime_param


class _Typer(typer.Typer):
    """Typer that lets `--ray` go without a value (then: a local Ray), which click options cannot."""

    def __call__(self, *args, **kwargs):
        sys.argv[1:] = with_ray_default(sys.argv[1:])
        return super().__call__(*args, **kwargs)


def with_ray_default(argv: list[str]) -> list[str]:
    """with_ray_default(["index", "a.csv", "--ray", "-q"]) -> ["index", "a.csv", "--ray", "local", "-q"]"""
    out = []
    for position, arg in enumerate(argv):
        out.append(arg)
        following = argv[position + 1] if position + 1 < len(argv) else None
        if arg == "--ray" and (following is None or following.startswith("-")):
            out.append("local")
    return out


app = _Typer(help="bertdex: semantic search over BERT sentence embeddings (FAISS + SQLite).",
             no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tutorial = typer.Typer(help="The BERT embedding tutorial, one command per step: tokens, layers, words, "
                            "similar-word, embed.", no_args_is_help=True)
app.add_typer(tutorial, name="tutorial")


# -- choices (the library's own lists; tests/test_cli.py checks they agree) -------------------------


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum of `values` for typer (members named with '_' for '-'): choices("Merge", "mean", "first")."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


Pooling = choices("Pooling", "mean", "max", "cls", "mean-max")
Precision = choices("Precision", "auto", "fp32", "bf16")
Backend = choices("Backend", "auto", "onnx", "openvino", "torch")
# below this many questions `query` takes the path quickest to start: OpenVINO's extra ~0.25 s of start
# (import, compiling) is repaid by ~1-2 ms a question only after a hundred or more
ONCE_QUESTIONS = 100
Mode = choices("Mode", "dense", "keyword", "hybrid")
IndexType = choices("IndexType", "auto", "flat", "hnsw", "ivf", "sq8", "ivfpq")
OnError = choices("OnError", "fail", "skip")
Format = choices("Format", "csv", "tsv", "jsonl", "text")
Strategy = choices("Strategy", "concat-last4", "sum-last4", "last", "second-last")
Merge = choices("Merge", "mean", "first", "last")
LogFormat = choices("LogFormat", "text", "json")


def default_model(texts: list[str]) -> str:
    """The model the library picks for these texts when --model is not given (by their language)."""
    from indexer.embed.models import default_model as pick

    return pick(texts)


def chosen(choice: Optional[Enum]) -> Optional[str]:
    """The plain string of an Enum choice (None stays None), for the library."""
    return None if choice is None else choice.value


# -- options shared by several commands ------------------------------------------------------------

IndexDir = Annotated[Path, typer.Argument(help="Index folder.", metavar="DIR")]
Model = Annotated[Optional[str], typer.Option("--model", envvar="BERTDEX_MODEL", show_envvar=True, help="A packaged model by short name (see `bertdex models`), a local model folder or a hub name. Default: $BERTDEX_MODEL, else the default model.")]
Layer = Annotated[Optional[int], typer.Option("--layer", help="Hidden state to pool: 0 = embeddings, negative from the top (-2 = second-to-last). Default: auto.")]
PoolingOption = Annotated[Optional[Pooling], typer.Option("--pooling", help="Default: auto.")]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success: no progress, no summary (warnings and errors still go to stderr).")]
BackendOption = Annotated[Backend, typer.Option("--backend", help="auto takes the path measured fastest on this machine among those that give fp32's vectors (see `bertdex doctor`).")]
PrecisionOption = Annotated[Precision, typer.Option("--precision", help="auto: measured once per machine (see `bertdex doctor`); fp32 or bf16 force it.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="Threads (default: all cores).")]

# index and add read their input the same way
Data = Annotated[Optional[Path], typer.Argument(help="CSV/TSV with a header, JSON Lines, or plain text (one entry a line); '-' reads stdin.", metavar="DATA")]
TextFields = Annotated[list[str], typer.Option("--text-field", "-t", help="Field to embed; repeat to embed several joined (-t question -t answer: each stays its own stored field). Default: text/question, or as the index was built.")]
IdField = Annotated[Optional[str], typer.Option("--id-field", help="Field holding each entry's key. Default: id/_id/key, else the line number; or as the index was built.")]
GroupField = Annotated[Optional[str], typer.Option("--group-field", help="Field grouping question variants of one answer; results show one row per group.")]
OnErrorOption = Annotated[OnError, typer.Option("--on-error", help="fail: refuse the whole file at the first bad row; skip: leave bad rows out.")]
FormatOption = Annotated[Optional[Format], typer.Option("--format", help="Input format (default: from the extension; sniffed for stdin).")]
Delimiter = Annotated[Optional[str], typer.Option("--delimiter", "-d", help="CSV delimiter, e.g. ';' or '\\t' (default: sniffed from the first lines).")]
Ray = Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Embed on Ray: alone, a local Ray with this machine's cores; `auto` or ray://HOST:10001, an existing cluster.")]
RayWorkers = Annotated[Optional[int], typer.Option("--ray-workers", min=1, help="Encoder actors on Ray (default: one per CPU of the cluster).")]
RayGpus = Annotated[float, typer.Option("--ray-gpus", min=0, help="GPUs each Ray actor reserves (default 0).")]
Checkpoint = Annotated[int, typer.Option("--checkpoint", min=1, help="A load of more entries commits every this many; killed, the same command run again resumes.")]
LongQuestions = Annotated[Optional[str], typer.Option("--long-questions", help="A question over the model's window: tail (keep its last tokens) or windows (embed its windows, score by the best); default: the index's setting (windows).")]


# commands whose exit status 1 says "not found" (grep's): their bad input exits 2, as a usage error does
FOUND_OR_NOT = {"query", "get"}
USAGE = 2


def fails_cleanly(command):
    """Turn a known failure (indexer.failures) into one line on stderr and its exit status."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from indexer.failures import explain

        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing from this command was committed", err=True)
            raise typer.Exit(130) from None
        except Exception as error:
            known = explain(error, kwargs.get("index_dir"))
            if known is None:
                raise
            typer.echo(f"error: {' '.join(known[0].split())}", err=True)
            status = known[1]
            if status == 1 and command.__name__ in FOUND_OR_NOT:  # there 1 means "no good answer" / "no such key"
                status = USAGE
            raise typer.Exit(status) from None

    return wrapper


def echo_json(data) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False))


def note(message: str) -> None:
    typer.echo(f"note: {message}", err=True)


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"bertdex {version('bertdex')}")
        except PackageNotFoundError:
            typer.echo("bertdex (not installed: run from a source tree)")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Show the version and exit.")] = False,
):
    """bertdex: semantic search over BERT sentence embeddings (FAISS + SQLite)."""


# -- indexing ---------------------------------------------------------------------------------------


def index_first(index_dir: Path, data: Optional[Path], old_index: Optional[Path]) -> tuple[Path, Path]:
    """(DIR, DATA) from `index DIR DATA`, or from the old `index DATA --index DIR` with a note."""
    if old_index is None:
        if data is None:
            raise typer.BadParameter("give the index folder, then the data: bertdex index DIR DATA")
        return index_dir, data
    if data is not None:
        raise typer.BadParameter("give the index folder once: bertdex index DIR DATA (--index is the old order)")
    note(f"`bertdex index DATA --index DIR` is the old order; write `bertdex index {old_index} {index_dir}` "
         "(the old order goes in the next version)")
    return old_index, index_dir


class input_file:
    """DATA as a path the readers can read twice: a file as is, '-' (stdin) spooled to a temporary file.

    `rename(message)` puts `<stdin>` in place of the temporary file's name.
    """

    def __init__(self, data: Path, fmt: Optional[Format]):
        self.path, self.fmt, self.spool = data, chosen(fmt), None
        self.rename = lambda message: message

    def __enter__(self) -> "input_file":
        if str(self.path) == "-":
            from indexer.ingest.stdin import spooled

            self.spool = spooled(sys.stdin.buffer, self.fmt)
            copy = self.spool.__enter__()
            self.path, self.fmt, self.rename = copy.path, copy.fmt, copy.rename
        return self

    def __exit__(self, *exc):
        return self.spool.__exit__(*exc) if self.spool else False


@app.command()
@fails_cleanly
def index(
    index_dir: Annotated[Path, typer.Argument(help="Index folder to create.", metavar="DIR")],
    data: Data = None,
    old_index: Annotated[Optional[Path], typer.Option("--index", "-i", hidden=True, help="The old order, `index DATA --index DIR` (deprecated).")] = None,
    text_field: TextFields = [],
    id_field: IdField = None,
    group_field: GroupField = None,
    model: Model = None,
    layer: Layer = None,
    pooling: PoolingOption = None,
    exclude_special: Annotated[bool, typer.Option(help="Leave [CLS]/[SEP] out of mean/max pooling.")] = False,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per window (default: the model's limit, at most 512).")] = None,
    window: Annotated[bool, typer.Option("--window/--truncate", help="Split texts longer than --max-length into overlapping windows (default), or cut them.")] = True,
    window_length: Annotated[Optional[int], typer.Option(help="Tokens per window of a long text (texts that fit in --max-length stay whole). Default: 128, at most --max-length.")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Tokens shared by consecutive windows (default: a quarter of the window).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Rebuild an existing index in place (one commit).")] = False,
    on_error: OnErrorOption = OnError.fail,
    fmt: FormatOption = None,
    delimiter: Delimiter = None,
    precision: PrecisionOption = Precision.auto,
    threads: Threads = None,
    backend: BackendOption = Backend.auto,
    index_type: Annotated[IndexType, typer.Option("--index-type", help="flat (exact), hnsw, ivf, sq8 (8-bit), ivfpq (compressed, re-scored), or auto: flat up to 20,000 vectors, HNSW above, compressed when float32 would not fit in memory; ANN search depth is tuned at each commit to recall@10 >= 0.98 vs exact.")] = IndexType.auto,
    ray: Ray = None,
    ray_workers: RayWorkers = None,
    ray_gpus: RayGpus = 0,
    checkpoint: Checkpoint = 50_000,
    companion: Annotated[Optional[str], typer.Option("--companion", help="A second model (name as --model) that embeds the same windows; each score is a weighted sum of both models' cosines. `bertdex tune` tries this for you.")] = None,
    companion_share: Annotated[float, typer.Option(min=0.05, max=0.95, help="The companion model's part of each score.")] = 0.5,
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Embed every entry of DATA and write a new index folder DIR."""
    from indexer import build_index
    from indexer.store.coverage import index_warnings

    index_dir, data = index_first(index_dir, data, old_index)
    with input_file(data, fmt) as source, progress_reporter(quiet, "indexing") as progress:
        report = build_index(
            source.path, index_dir, text_fields=text_field, id_field=id_field, group_field=group_field,
            model=model, layer=layer, pooling=chosen(pooling), exclude_special=exclude_special,
            max_length=max_length, window=window, window_length=window_length, stride=stride, replace=replace,
            on_error=chosen(on_error), fmt=source.fmt, delimiter=delimiter, precision=chosen(precision),
            threads=threads, backend=chosen(backend), progress=progress, index_type=chosen(index_type),
            checkpoint=checkpoint, ray=ray, ray_workers=ray_workers, ray_gpus=ray_gpus,
            companion=companion, companion_share=companion_share,
        )
    print_report(report, as_json, source.rename, quiet)
    for warning in index_warnings(index_dir):
        typer.echo(f"warning: {warning}", err=True)


@app.command()
@fails_cleanly
def add(
    index_dir: IndexDir,
    data: Annotated[Path, typer.Argument(help="File of entries to add or update by key; '-' reads stdin.", metavar="DATA")],
    text_field: TextFields = [],
    id_field: IdField = None,
    group_field: GroupField = None,
    on_error: OnErrorOption = OnError.fail,
    fmt: FormatOption = None,
    delimiter: Delimiter = None,
    precision: PrecisionOption = Precision.auto,
    threads: Threads = None,
    backend: BackendOption = Backend.auto,
    ray: Ray = None,
    ray_workers: RayWorkers = None,
    ray_gpus: RayGpus = 0,
    checkpoint: Checkpoint = 50_000,
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Add entries, or update them by key: unchanged texts are not re-embedded."""
    from indexer import add_documents

    with input_file(data, fmt) as source, progress_reporter(quiet, "adding") as progress:
        report = add_documents(index_dir, source.path, text_fields=text_field, id_field=id_field, group_field=group_field,
                               on_error=chosen(on_error), fmt=source.fmt, delimiter=delimiter,
                               precision=chosen(precision), threads=threads, backend=chosen(backend),
                               progress=progress, checkpoint=checkpoint, ray=ray, ray_workers=ray_workers,
                               ray_gpus=ray_gpus)
    print_report(report, as_json, source.rename, quiet)


@app.command()
@fails_cleanly
def delete(
    index_dir: IndexDir,
    keys: Annotated[list[str], typer.Argument(help="Keys of the entries to remove.")],
    as_json: Json = False,
):
    """Remove entries by key, in one commit."""
    from indexer import delete_documents

    removed, missing = delete_documents(index_dir, keys)  # checks the keys as a file's or HTTP's are checked
    if as_json:
        echo_json({"deleted": removed, "missing": missing})
        return
    typer.echo(f"deleted {removed} entr{'y' if removed == 1 else 'ies'}" + ("" if removed else "; nothing changed, nothing written"))
    if missing:
        typer.echo(f"not in the index: {', '.join(missing)}", err=True)


@app.command()
@fails_cleanly
def verify(
    index_dir: IndexDir,
    texts: Annotated[int, typer.Option("--texts", min=0, help="Embed this many stored texts and check each finds its entry (loads the model; 0: skip).")] = 20,
    as_json: Json = False,
):
    """Check the index: SQLite, counts, each FAISS segment's checksum, unit norms, and entries found by their own text."""
    from indexer.store.verify import verify_index

    report = verify_index(index_dir, text_sample=texts)
    if as_json:
        echo_json(report.to_dict())
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@fails_cleanly
def compact(
    index_dir: IndexDir,
    as_json: Json = False,
):
    """Merge the index's segments into one, dropping deleted vectors, in one commit (searches go on meanwhile)."""
    from indexer.store.folder import compact_index

    typer.echo(f"compacting {index_dir} (reads every segment; a large index takes a while)", err=True)
    report = compact_index(index_dir)
    if as_json:
        echo_json(report)
        return
    if report["generation_before"] == report["generation"]:
        typer.echo(f"{index_dir}: one segment, nothing deleted: nothing to compact")
    else:
        count = report["segments_before"]
        typer.echo(f"{index_dir}: {count} segment{'s' if count != 1 else ''} and {report['deleted_before']} deleted vectors "
                   f"merged into one {report['kind']} segment; {report['vectors']} vectors, generation {report['generation']}")


@app.command()
@fails_cleanly
def repair(
    index_dir: IndexDir,
    threads: Annotated[Optional[int], typer.Option(help="Threads (default: all cores).")] = None,
    as_json: Json = False,
):
    """Rebuild damaged FAISS segments (or all) from the texts in SQLite, embedded by the recorded recipe, in one commit."""
    from indexer.store.repair import repair_index

    report = repair_index(index_dir, threads=threads)
    if as_json:
        echo_json(report.to_dict())
        return
    for problem in report.found:
        typer.echo(f"found: {problem}")
    if report.segments:
        typer.echo(f"repaired: {', '.join(report.segments)} rebuilt ({report.reembedded} entries re-embedded); "
                   f"{report.documents} entries, {report.vectors} vectors; generation {report.generation}")
    else:
        typer.echo(f"repaired: {report.documents} entries, {report.vectors} vectors re-embedded; generation {report.generation}")


# -- searching --------------------------------------------------------------------------------------

AsJsonLines = Annotated[bool, typer.Option("--nl", help="One JSON object per row (newline-delimited).")]
AsCsv = Annotated[bool, typer.Option("--csv", help="Rows as CSV with a header.")]
AsTsv = Annotated[bool, typer.Option("--tsv", help="Rows as TSV with a header.")]
Fields = Annotated[list[str], typer.Option("--fields", help="Columns of the table, --csv, --tsv and --nl rows, comma-separated: rank, score, key, text, span, group, variants, question, or a stored field (default: rank, score, key, text and every stored field).")]
Width = Annotated[int, typer.Option("--width", min=0, help="Cut each table cell to this many characters, around the matching window (0: whole).")]


def output_format(*, as_json: bool = False, nl: bool = False, csv: bool = False, tsv: bool = False,
                  answer_only: bool = False) -> str:
    """table, json, nl, csv, tsv or answer (--answer-only) from the output flags; at most one may be given."""
    given = [name for name, on in (("json", as_json), ("nl", nl), ("csv", csv), ("tsv", tsv), ("answer-only", answer_only)) if on]
    if len(given) > 1:
        raise typer.BadParameter(f"choose one output format, not --{' and --'.join(given)}")
    return {"answer-only": "answer"}.get(given[0], given[0]) if given else "table"


def asked_questions(questions: Optional[list[str]], from_file: Optional[Path]) -> list[str]:
    """The questions given, then stdin's lines ('-' as a question or as --file), then --file's lines."""
    from indexer.ingest.entries import question_lines
    from indexer.ingest.readers import read_questions

    given = list(questions or [])
    asked = [question for question in given if question != "-"]
    if "-" in given or str(from_file) == "-":
        read = question_lines(sys.stdin.buffer.read(), "stdin")
        if not read and not asked and (from_file is None or str(from_file) == "-"):
            raise typer.BadParameter("stdin was empty: give one question per line on stdin ('-'), or the question itself")
        asked += read
    if from_file is not None and str(from_file) != "-":
        from_lines = read_questions(from_file)
        if not from_lines and not asked:
            raise typer.BadParameter(f"--file {from_file}: no question in it (one per line)")
        asked += from_lines
    if not asked:
        raise typer.BadParameter("give a question, '-' for stdin, or --file")
    return asked


@app.command()
@fails_cleanly
def query(
    index_dir: IndexDir,
    questions: Annotated[Optional[list[str]], typer.Argument(help="Questions; '-' reads one per line from stdin.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Answers per question (1 to 1000).")] = 5,
    from_file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Read questions from a file, one per line ('-': stdin).")] = None,
    mode: Annotated[Optional[Mode], typer.Option(help="Default: the index's tuned mode, else dense.")] = None,
    weight: Annotated[Optional[float], typer.Option(help="Hybrid: the dense side's share, 0..1.")] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Drop answers scoring below this (default: the index's calibrated cut); none left = 'no good answer'.")] = None,
    where: Annotated[list[str], typer.Option("--where", help="Filter on a stored field: NAME=VALUE. Several fields: all must match; one field twice: either value matches.")] = [],
    fields: Fields = [],
    width: Width = 240,
    model: Model = None,
    layer: Layer = None,
    pooling: PoolingOption = None,
    long_questions: LongQuestions = None,
    answer_only: Annotated[bool, typer.Option("--answer-only", help="Print only the top answer's text, to paste: its stored `answer` field if it has one, else its text (--fields NAME: that field). Nothing for a question with no good answer.")] = False,
    no_fail: Annotated[bool, typer.Option("--no-fail", help="Exit 0 even when a question gets no good answer (the answer rows still say `answered: false`).")] = False,
    as_json: Json = False,
    as_nl: AsJsonLines = False,
    as_csv: AsCsv = False,
    as_tsv: AsTsv = False,
):
    """Answer questions with the closest entries, ranked by cosine similarity; exit 1 when one gets no good answer."""
    from search.early import start_question_model

    start_question_model(index_dir, model=model)  # the model loads on a thread while the rest is imported
    from search.filters import check_filter_fields, parse_where

    output = output_format(as_json=as_json, nl=as_nl, csv=as_csv, tsv=as_tsv, answer_only=answer_only)
    asked = asked_questions(questions, from_file)
    filters = parse_where(where)
    from search import Searcher
    from search.answer import search_answers
    from search.searcher import check_search_options

    check_search_options(asked, k, chosen(mode), weight, min_score)  # before torch is imported and the model loads
    with stored_fields(index_dir) as db:  # so are the fields --where and --fields name
        check_filter_fields(db, filters)
        columns = column_names(fields, db)
    # a few questions: the path that starts quickest (ONNX Runtime); many: the one fastest per question
    purpose = "once" if len(asked) < ONCE_QUESTIONS else "question"
    searcher = Searcher(index_dir, model=model, layer=layer, pooling=chosen(pooling), purpose=purpose)
    answers = search_answers(searcher, asked, k, mode=chosen(mode), min_score=min_score, weight=weight,
                             filters=filters, long_questions=long_questions)
    print_answers(output, answers, columns, width, len(asked) > 1)
    if not no_fail and not all(made.answered for made in answers):
        raise typer.Exit(1)


def print_answers(output: str, answers, columns: Optional[list[str]], width: int, several: bool) -> None:
    """Each question's answer in the chosen output: JSON objects, a table, rows, or the top answer alone."""
    if output == "json":
        for made in answers:
            echo_json(made.to_dict())
    elif output == "answer":
        for made in answers:
            if made.hits:
                hit = made.hits[0]
                name = (columns or ["answer" if "answer" in hit.fields else "text"])[0]
                typer.echo(hit_row(made.question, hit).get(name) or "")
    elif output == "table":
        for made in answers:
            print_hits(made, several, columns, width)
    else:
        rows = [answer_row(made, hit) for made in answers for hit in (made.hits or [None])]
        print_rows_as(output, columns or default_columns(answers), rows)


@contextmanager
def stored_fields(index_dir: Path):
    """The index's SQLite file, read-only, for checks that need no model."""
    from indexer.store.manifest import check_index_folder, connect

    db = connect(check_index_folder(index_dir), readonly=True)
    try:
        yield db
    finally:
        db.close()


def answer_row(made, hit) -> dict:
    """One output row: a hit of an answered question, or the one row of a question with no good answer."""
    if hit is None:
        return {"question": made.question, "answered": False, "why": made.why}
    return {**hit_row(made.question, hit), "answered": True, "band": made.band(hit), "why": None}


HIT_COLUMNS = ("rank", "score", "key", "text", "span", "group", "variants", "question", "answered", "band", "why")


def column_names(requested: list[str], db) -> Optional[list[str]]:
    """The --fields names in order (None: the default); a name that is neither a column nor a stored field
    of any entry is a usage error (exit 2), whatever the hits."""
    from indexer.errors import UsageError
    from search.filters import field_names, has_field

    names = [name.strip() for item in requested for name in item.split(",") if name.strip()]
    for name in names:
        if name not in HIT_COLUMNS and not has_field(db, name):
            raise UsageError(f"--fields {name!r}: no such column or stored field; choose from "
                             f"{', '.join(dict.fromkeys([*HIT_COLUMNS, *field_names(db)]))}")
    return names or None


def default_columns(answers) -> list[str]:
    stored = dict.fromkeys(name for made in answers for hit in made.hits for name in hit.fields)
    return ["question", "answered", "rank", "score", "key", "text",
            *[name for name in stored if name not in HIT_COLUMNS], "why"]


def hit_row(question: str, hit) -> dict:
    """Everything a row can show for one hit: the stored fields, then the hit's own columns."""
    return {**hit.fields, "question": question, "rank": hit.rank, "score": round(hit.score, 6), "key": hit.key,
            "text": hit.text, "span": list(hit.span) if hit.span else None, "group": hit.group,
            "variants": list(hit.variants)}


@app.command()
@fails_cleanly
def duplicates(
    index_dir: IndexDir,
    threshold: Annotated[Optional[float], typer.Option(help="Cosine at or above which two entries are near-duplicates (default: measured on the index's groups, else 0.9).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most pairs to list, closest first.")] = 100,
    width: Width = 80,
    as_json: Json = False,
    as_nl: AsJsonLines = False,
    as_csv: AsCsv = False,
    as_tsv: AsTsv = False,
):
    """List pairs of entries whose vectors are closer than a threshold, so a desk can merge them."""
    from search.quality.duplicates import find_duplicates

    output = output_format(as_json=as_json, nl=as_nl, csv=as_csv, tsv=as_tsv)
    found = find_duplicates(index_dir, threshold=threshold, limit=limit)
    if output == "json":
        echo_json(found.to_dict())
        return
    rows = [pair.to_dict() for pair in found.pairs]
    if output != "table":
        print_rows_as(output, ["cosine", "key_a", "key_b", "text_a", "text_b"], rows)
    elif rows:
        print_rows(("cosine", "key a", "key b", "text a", "text b"),
                   [(f"{r['cosine']:.4f}", r["key_a"], r["key_b"], cut(r["text_a"], width), cut(r["text_b"], width))
                    for r in rows])
    typer.echo(f"{len(found.pairs)} pair(s) at cosine >= {found.threshold:.4f} ({found.rule})"
               + (f"; {found.more} more not listed (--limit)" if found.more else ""), err=output != "table")


def cut(text: str, width: int) -> str:
    return text if not width or len(text) <= width else text[: max(width - 1, 1)] + "…"


@app.command()
@fails_cleanly
def get(
    index_dir: IndexDir,
    keys: Annotated[list[str], typer.Argument(help="Keys of the entries to show.", metavar="KEY...")],
    as_json: Json = False,
):
    """Show stored entries by key (--json: as HTTP's GET /documents/KEY); exit 1 when a key is not in the index."""
    from indexer.store.export import Entries

    with Entries(index_dir) as entries:
        found = {key: entries.document(key) for key in keys}
    for key, document in found.items():
        if document is None:
            typer.echo(f"{key}: not in the index", err=True)
        elif as_json:
            echo_json(document)
        else:
            shown = {"key": document["key"], "text": document["text"], **document["fields"]}
            if document["group"]:
                shown.update(group=document["group"], variants=" ".join(document["variants"]))
            print_rows(["field", "value"], [[name, "" if value is None else str(value)] for name, value in shown.items()])
    if None in found.values():
        raise typer.Exit(1)


@app.command()
@fails_cleanly
def export(
    index_dir: IndexDir,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file (default: stdout).")] = None,
    quiet: Quiet = False,
):
    """Write every entry as JSON Lines (key, text, stored fields, group), which `bertdex index` reads back."""
    from indexer.store.export import Entries

    with Entries(index_dir) as entries, (open(out, "w", encoding="utf-8") if out else nullcontext(sys.stdout)) as sink:
        count = 0
        for row in entries:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        options = shlex.join(entries.layout.reindex_options())
    if not quiet:
        note(f"{count} entries; read them back with: bertdex index NEW {out or 'FILE'} --format jsonl {options}")


@app.command()
@fails_cleanly
def info(index_dir: IndexDir, as_json: Json = False):
    """Show an index's model, recipe (and why), counts and settings."""
    from indexer.store.info import index_info

    details = index_info(index_dir)
    if as_json:
        echo_json(details)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for name, value in flatten(details):
        table.add_row(name, str(value))
    Console().print(table)


def flatten(data: dict, prefix: str = ""):
    for name, value in data.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


@app.command()
def models(as_json: Json = False):
    """List the models that come with bertdex (use one with --model NAME): languages, size, layers, speed."""
    from dataclasses import asdict

    from indexer.embed.models import KNOWN_MODELS, known_model

    english, other = (known_model(default_model([text])) for text in ("Where is my parcel?", "택배가 어디 있나요?"))
    default_for = {m.name: ", ".join(kind for kind, pick in (("English", english), ("other languages", other))
                                     if pick == m) for m in KNOWN_MODELS}
    for model in KNOWN_MODELS:
        if as_json:
            echo_json({**asdict(model), "default_for": default_for[model.name]})
    if not as_json:
        print_whole_words(["name", "default for", "languages", "layers", "size", "speed", "from"],
                          [[m.name, default_for[m.name] or "-", m.languages, str(m.layers), m.size, m.speed, m.source]
                           for m in KNOWN_MODELS])


def print_whole_words(columns: list[str], rows: list[list[str]]) -> None:
    """A table whose cells wrap between words only; where the terminal is too narrow for that, one block
    per row ("name" first, then "  column: value" lines) instead of a table that breaks names mid-word."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    widths = [max(len(word) for cell in (column, *(row[i] for row in rows)) for word in cell.split() or [""])
              for i, column in enumerate(columns)]
    if sum(widths) + 3 * len(columns) + 1 > console.width:
        for row in rows:
            typer.echo(row[0])
            for column, value in zip(columns[1:], row[1:]):
                typer.echo(f"  {column}: {value}")
        return
    table = Table()
    for column, width in zip(columns, widths):
        table.add_column(column, min_width=width, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
@fails_cleanly
def doctor(model: Model = None, remeasure: Annotated[bool, typer.Option("--remeasure", help="Forget this machine's saved choice and time the candidate paths again.")] = False,
           as_json: Json = False):
    """Show this machine, the paths measured for the model (ONNX Runtime, OpenVINO fp32/bf16, PyTorch fp32/bf16,
    CUDA) and the ones chosen: bulk, question (a process that stays) and once (a question from the shell)."""
    from indexer.embed.resolve import machine_report

    report = machine_report(model, remeasure=remeasure)
    if as_json:
        echo_json(report)
        return
    for name, value in flatten({key: report[key] for key in ("model", "machine", "native_bf16", "chosen", "question_path",
                                                             "once_path", "reason")}):
        typer.echo(f"{name}: {value}")
    if report["measurements"]:
        print_rows(["path", "texts/s", "1 question ms", "long question ms", "cosine vs fp32", "passes"],
                   [[m["path"], f'{m["texts_per_s"]:.0f}', f'{m["one_question_ms"]:.1f}',
                     "" if m["long_question_ms"] is None else f'{m["long_question_ms"]:.1f}', f'{m["cosine_min_vs_fp32"]:.6f}',
                     "yes" if m["passes"] else f'no ({m["error"] or "vectors moved"})']
                    for m in report["measurements"]])


# -- tutorial ---------------------------------------------------------------------------------------
# The BERT embedding tutorial, one command per step: tokens, layers, words, similar-word, embed.

TutorialText = Annotated[str, typer.Argument(help="The text to look at.")]
StrategyOption = Annotated[Strategy, typer.Option("--strategy", help="Word vector from the hidden states.")]
MergeOption = Annotated[Merge, typer.Option("--merge", help="A word cut into pieces (WordPiece or SentencePiece) becomes the mean, first or last piece.")]
VectorsOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the vectors: .json (vectors inside) or .npy (and a .json of labels beside it).")]


def tutorial_command(name: str):
    """`bertdex tutorial NAME`, and the old top-level `bertdex NAME` as a hidden alias with a note (one version)."""

    def register(command):
        tutorial.command(name)(command)

        @functools.wraps(command)
        def old_name(*args, **kwargs):
            note(f"`bertdex {name}` is now `bertdex tutorial {name}`; the old name goes in the next version")
            return command(*args, **kwargs)

        app.command(name, hidden=True)(old_name)
        return command

    return register


@tutorial_command("tokens")
@fails_cleanly
def tutorial_tokens(text: TutorialText, model: Model = None, as_json: Json = False):
    """Show TEXT's tokens (WordPiece or SentencePiece) and ids, the unknown count, truncation, and a warning when Hangul falls apart into jamo."""
    from indexer.tutorial.tokens import STYLE_NOTES, load_encoder, token_table

    table = token_table(load_encoder(model or default_model([text])), text)
    if as_json:
        echo_json(table.to_dict())
        return
    rows = [(str(t.position), t.token, str(t.id), "" if t.word is None else str(t.word), text[t.start:t.end],
             "" if t.kept else "yes") for t in table.tokens]
    print_rows(("#", "token", "id", "word", "text", "cut"), rows)
    typer.echo(f"{len(table.tokens)} tokens, window {table.max_length}: {'TRUNCATED' if table.truncated else 'not truncated'}; "
               f"{table.unk_token}: {table.unknown}; lower-cases: {'yes' if table.lowercase else 'no'}"
               + (f"; Hangul into jamo: {'yes' if table.decomposes_hangul else 'no'}" if table.has_hangul else ""))
    typer.echo(STYLE_NOTES.get(table.style, f"pieces: {table.style}"))
    for warning in table.warnings:
        typer.echo(f"warning: {warning}", err=True)


@tutorial_command("layers")
@fails_cleanly
def tutorial_layers(
    text: TutorialText,
    model: Model = None,
    histogram: Annotated[Optional[Path], typer.Option(help="Write a PNG histogram of one token's values in one layer (needs matplotlib).")] = None,
    layer: Annotated[int, typer.Option("--layer", help="Histogram: hidden state (0 = embeddings, negative from the top).")] = 5,
    token: Annotated[int, typer.Option("--token", help="Histogram: token position (0 is the first special token, [CLS] or <s>).")] = 5,
    as_json: Json = False,
):
    """Show the hidden states' shape [layers x tokens x hidden] and each layer's value range."""
    from indexer.tutorial.tokens import layer_report, load_encoder, token_histogram

    encoder = load_encoder(model or default_model([text]))
    report = layer_report(encoder, text)
    plot = token_histogram(encoder, text, histogram, layer=layer, position=token) if histogram else None
    if as_json:
        data = report.to_dict()
        if plot:
            data["histogram"] = {"path": str(plot.path), "layer": plot.layer, "token": plot.position, "piece": plot.token}
        echo_json(data)
        return
    layers_, tokens_, hidden = report.shape
    typer.echo(f"hidden states: [{layers_} layers x {tokens_} tokens x {hidden} features] "
               f"(layer 0 is the embeddings output, then {layers_ - 1} transformer layers)")
    print_rows(("layer", "min", "max", "mean", "std"),
               [(str(r.layer), f"{r.minimum:.4f}", f"{r.maximum:.4f}", f"{r.mean:.4f}", f"{r.std:.4f}") for r in report.layers])
    if plot:
        typer.echo(f"histogram of token {plot.position} {plot.token!r} in hidden state {plot.layer} "
                   f"({plot.values.size} values): {plot.path}")


@tutorial_command("words")
@fails_cleanly
def tutorial_words(text: TutorialText, model: Model = None, strategy: StrategyOption = Strategy.sum_last4,
                   merge: MergeOption = Merge.mean, out: VectorsOut = None, as_json: Json = False):
    """One contextual vector per word of TEXT; a word cut into pieces comes back as one word."""
    from indexer.tutorial.tokens import load_encoder
    from indexer.tutorial.words import save_vectors, word_vectors

    name = model or default_model([text])
    result = word_vectors(load_encoder(name), text, strategy=chosen(strategy), merge=chosen(merge))
    if out:
        about = {"text": text, "model": name, "strategy": chosen(strategy), "merge": chosen(merge)}
        written = save_vectors(out, result.vectors, result.labels(), about)
        typer.echo(f"{len(result.words)} word vectors of {result.vectors.shape[1]} features: "
                   f"{', '.join(map(str, written))}", err=as_json)
    if as_json:
        for label, vector in zip(result.labels(), result.vectors):
            echo_json({**label, "vector": vector.tolist()})
    elif not out:
        print_rows(("#", "word", "pieces", "features", "norm", "first values"),
                   [(str(i), w.text, " ".join(w.pieces), str(v.size), f"{float((v @ v) ** 0.5):.3f}", preview(v))
                    for i, (w, v) in enumerate(zip(result.words, result.vectors))])
    if result.truncated:
        typer.echo("warning: the text is longer than the model's window; words past it are left out", err=True)


@tutorial_command("similar-word")
@fails_cleanly
def tutorial_similar_word(
    sentences: Annotated[list[str], typer.Argument(help="Two or more sentences that use the word.")],
    word: Annotated[str, typer.Option("--word", "-w", help="The word to compare (Korean: may be glued to a particle, 배 in 배를).")],
    model: Model = None,
    strategy: StrategyOption = Strategy.sum_last4,
    merge: MergeOption = Merge.mean,
    as_json: Json = False,
):
    """Cosine similarity of one word's contextual vectors across sentences, as a matrix."""
    from indexer.tutorial.tokens import load_encoder
    from indexer.tutorial.words import similar_word

    result = similar_word(load_encoder(model or default_model(sentences)), sentences, word, strategy=chosen(strategy), merge=chosen(merge))
    if as_json:
        echo_json(result.to_dict())
        return
    count = len(result.occurrences)
    print_rows(("#", "sentence", "pieces", *map(str, range(1, count + 1))),
               [(str(i + 1), o.sentence, " ".join(o.pieces), *(f"{s:.3f}" for s in result.matrix[i]))
                for i, o in enumerate(result.occurrences)])
    typer.echo(f"cosine of {word!r} ({chosen(strategy)}, pieces merged by {chosen(merge)})")


@tutorial_command("embed")
@fails_cleanly
def tutorial_embed(
    texts: Annotated[list[str], typer.Argument(help="Texts; '-' reads one per line from stdin.")],
    index_dir: Annotated[Optional[Path], typer.Option("--index", "-i", help="Embed as this index embeds its questions.")] = None,
    model: Model = None,
    layer: Layer = None,
    pooling: PoolingOption = None,
    out: VectorsOut = None,
    as_json: Json = False,
):
    """Sentence vectors (L2-normalized) by an index's recipe or a chosen one."""
    from indexer.tutorial.words import save_vectors, sentence_vectors

    if texts == ["-"]:
        texts = [line.strip() for line in sys.stdin if line.strip()]
    result = sentence_vectors(texts, index=index_dir, model=model, layer=layer, pooling=chosen(pooling))
    recipe = result.recipe
    if out:
        about = {"recipe": recipe.to_dict(), "reason": result.reason}
        written = save_vectors(out, result.vectors, result.labels(), about)
        typer.echo(f"{len(result.texts)} vectors of {recipe.dimension} features: {', '.join(map(str, written))}",
                   err=as_json)
    if as_json:
        for text, vector in zip(result.texts, result.vectors):
            echo_json({"text": text, "vector": vector.tolist()})
    elif not out:
        typer.echo(f"recipe: {recipe.pooling} of hidden state {recipe.layer} of {recipe.describe()}, "
                   f"{recipe.dimension} features ({result.reason})")
        print_rows(("#", "text", "first values"),
                   [(str(i), text, preview(vector)) for i, (text, vector) in enumerate(zip(result.texts, result.vectors))])
    if result.truncated:
        typer.echo(f"warning: {result.truncated} texts were longer than the model's window and were cut", err=True)


# -- http service -----------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def serve(
    index_dir: IndexDir,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs an API key or --read-only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File holding the API key that writes need (else env BERTDEX_API_KEY).")] = None,
    read_only: Annotated[bool, typer.Option(help="Refuse every write, even with a key.")] = False,
    batch_window_ms: Annotated[float, typer.Option(help="How long a question waits for others to share its forward pass.")] = 2.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Most questions in one forward pass (1: no micro-batching).")] = 64,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads (default: all cores; 1 is faster on a busy machine).")] = None,
    query_log: Annotated[bool, typer.Option("--query-log/--no-query-log", help="Log each asked question in the index (the newest 10,000), for `bertdex feedback`.")] = True,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="One line per request on stderr: method, path, status, ms.")] = True,
    log_format: Annotated[LogFormat, typer.Option("--log-format", help="The access log's lines: text (`12:00:01 POST /search 200 12.3ms`) or json (one object per line: time, method, path, status, ms, client).")] = LogFormat.text,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (no start line, no access log).")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Server processes on one port over the same folder; more than 1 serves read-only.")] = 1,
):
    """Serve the index over HTTP: POST /search, /feedback, /documents; GET /fields, /health, /info, /metrics; a search page at /."""
    import os

    from search.server.app import access_log_to_stderr, bind_socket, check_bind, serve as run_server

    api_key = os.environ.get("BERTDEX_API_KEY") or None
    if api_key_file is not None:
        try:
            api_key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise typer.BadParameter(f"--api-key-file {api_key_file}: {error.strerror}") from None
    writable = check_bind(host, api_key, read_only or workers > 1)
    from search.searcher import open_manifest

    open_manifest(index_dir)  # not an index: one line, before anything starts
    sock = bind_socket(host, port) if workers == 1 else None  # a busy port fails here, before the start line
    if workers == 1:
        from search.early import start_question_model

        start_question_model(index_dir, threads=threads, purpose="question")  # compiles while the server loads
    if access_log and not quiet:
        access_log_to_stderr(log_format == LogFormat.json)
    from search.server.service import access_line, folder_is_writable

    access = access_line(writable=writable, read_only=read_only, workers=workers,
                         folder_writable=folder_is_writable(index_dir))
    start_line = f"starting: {index_dir} on http://{host}:{port}/ ({access}; API docs at /docs)"
    run_server(index_dir, host=host, port=port, api_key=api_key, read_only=read_only,
               batch_window=batch_window_ms / 1000, max_batch=max_batch, threads=threads,
               query_log=query_log, access_log=access_log and not quiet and chosen(log_format), sock=sock, workers=workers,
               ready=None if quiet else lambda: typer.echo(start_line, err=True))


# -- answer quality ---------------------------------------------------------------------------------

Queries = Annotated[Optional[Path], typer.Option("--queries", help="BEIR queries.jsonl ({\"_id\", \"text\"} per line).")]
Qrels = Annotated[Optional[Path], typer.Option("--qrels", help="BEIR qrels.tsv (query-id, corpus-id, score).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Measure and print, but store nothing in the index.")]
IgnoreIdentical = Annotated[bool, typer.Option("--ignore-identical-ids", help="Drop from a query's ranking the entry whose key is the query's id or whose text is the query's text (BEIR's ignore_identical_ids; always on when tuning without labels).")]


def labelled(queries: Optional[Path], qrels: Optional[Path], required: bool):
    from search.quality.evaluate import load_qrels, load_queries

    if (queries is None) != (qrels is None) or (required and queries is None):
        raise typer.BadParameter("give both --queries and --qrels" + ("" if required else ", or neither"))
    return (load_queries(queries), load_qrels(qrels)) if queries else (None, None)


@app.command("eval")
@fails_cleanly
def eval_command(
    index_dir: IndexDir,
    queries: Queries = None,
    qrels: Qrels = None,
    mode: Annotated[Optional[Mode], typer.Option(help="Default: the index's tuned mode.")] = None,
    weight: Annotated[Optional[float], typer.Option(help="Hybrid: the dense side's share, 0..1.")] = None,
    per_query: Annotated[bool, typer.Option("--per-query", help="Also show each query's result.")] = False,
    ignore_identical_ids: IgnoreIdentical = False,
    long_questions: LongQuestions = None,
    as_json: Json = False,
):
    """Measure an index on labelled queries: MRR@10, nDCG@10, Recall@1/5/10, hit@1."""
    from search.quality.evaluate import evaluate_index

    from search.filters import check_weight

    check_weight(weight)
    asked, judged = labelled(queries, qrels, required=True)
    result = evaluate_index(index_dir, asked, judged, mode=chosen(mode), weight=weight,
                            ignore_identical_ids=ignore_identical_ids, long_questions=long_questions)
    if as_json:
        echo_json(result.to_dict(per_query))
        return
    if per_query:
        print_rows(["query", "mrr@10", "hit@1", "top answers", "relevant"],
                   [[r.query_id, f"{r.metrics['mrr@10']:.3f}", f"{r.metrics['hit@1']:.0f}", " ".join(r.ranked[:3]),
                     " ".join(r.relevant[:3])] for r in result.per_query])
    typer.echo(f"{result.queries} queries, {result.describe()}"
               + (f"; {result.ignored} entries identical to their query ignored" if ignore_identical_ids else "")
               + (f"; {result.missing} qrels queries had no text" if result.missing else ""))
    typer.echo("  ".join(f"{name} {value:.4f}" for name, value in result.metrics.items()))


@app.command()
@fails_cleanly
def tune(
    index_dir: IndexDir,
    queries: Queries = None,
    qrels: Qrels = None,
    group_field: Annotated[Optional[str], typer.Option(help="Without labels: a stored field whose shared values mark phrasings of one question (default: the index's groups).")] = None,
    max_queries: Annotated[int, typer.Option(help="Held-out questions to use at most (evenly spread).")] = 2000,
    ignore_identical_ids: IgnoreIdentical = False,
    dry_run: DryRun = False,
    from_feedback: Annotated[bool, typer.Option("--feedback", help="Tune on the answers agents marked right (thumbs up, or 'this one was right'), as labelled queries.")] = False,
    other_models: Annotated[bool, typer.Option("--other-models/--same-model", help="Also try the other bundled models (entries embedded once more by each; a choice of one re-embeds the index).")] = True,
    adapt: Annotated[bool, typer.Option("--adapt", help="Also try the index's model fine-tuned on these questions' pairs (and the index's groups), measured out of sample; kept only on a significant gain (the model is stored in the index folder).")] = False,
    adapt_steps: Annotated[Optional[int], typer.Option(min=1, help="Training steps per adaptation (default: by the number of pairs, 8 to 30).")] = None,
    min_new_verdicts: Annotated[int, typer.Option(min=0, help="With --feedback --adapt: adapt only when this many verdicts arrived since the last try; else exit 0 saying so (for cron).")] = 20,
    as_json: Json = False,
):
    """Try layer x pooling x keyword/hybrid fusion (and the other bundled models) on held-out questions; keep the best only on a significant gain."""
    from search.quality.tune import tune_index

    if from_feedback and (queries or qrels):
        raise typer.BadParameter("give --feedback or --queries/--qrels, not both")
    asked, judged = labelled(queries, qrels, required=False)
    weights, seen = None, None
    if from_feedback:
        from search.quality.feedback import labelled_from_feedback

        if adapt:
            from search.quality.adapt import feedback_weights, new_verdicts, verdicts_of

            fresh, newest = new_verdicts(index_dir)
            if fresh < min_new_verdicts:
                message = (f"{fresh} new verdicts since the last adaptation, fewer than --min-new-verdicts "
                           f"{min_new_verdicts}: nothing to do")
                echo_json({"folder": str(index_dir), "new_verdicts": fresh, "adapted": False, "reason": message}) \
                    if as_json else typer.echo(message)
                return
            weights, seen = feedback_weights(verdicts_of(index_dir)), {"verdicts_seen": newest}
        from indexer.errors import BertdexError
        from search.quality.choose import FOLDS

        asked, judged = labelled_from_feedback(index_dir)
        if len(judged) < FOLDS:  # fewer questions than folds: no held-out measure worth a decision
            raise BertdexError(f"tune --feedback: only {len(judged)} question{'s' if len(judged) != 1 else ''} "
                               f"ha{'ve' if len(judged) != 1 else 's'} an answer marked right; tuning needs at least "
                               f"{FOLDS} (one per cross-validation fold): collect more verdicts, or give --queries/--qrels")
    progress = (lambda message: typer.echo(message, err=True)) if adapt else None  # stderr: --json stays clean
    report = tune_index(index_dir, queries=asked, qrels=judged, group_field=group_field, store=not dry_run,
                        max_queries=max_queries, ignore_identical_ids=ignore_identical_ids, other_models=other_models,
                        adapt=adapt, adapt_steps=adapt_steps, pair_weights=weights, note=seen, progress=progress)
    if not hasattr(report, "trials"):  # a plain FAQ with nothing to measure on: said in one line, exit 0
        echo_json(report.to_dict()) if as_json else typer.echo(report.needs)
        return
    if as_json:
        echo_json(report.to_dict())
        return
    rows = []
    for trial in report.trials:
        mark = "best" if trial.candidate == report.best.candidate else ("current" if trial.candidate == report.current.candidate else "")
        m = trial.metrics
        rows.append([mark, trial.candidate.label(), f"{m['mrr@10']:.4f}", f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.3f}", f"{m['hit@1']:.3f}"])
    print_rows(["", "tried", "mrr@10", "ndcg@10", "recall@10", "hit@1"], rows)
    for measured in filter(None, (report.measured, report.other)):
        print_decision(measured, chose=measured is report.measured and report.other is not None)
    if report.stored:
        new = report.chosen.candidate
        typer.echo("stored in the index" + (f" (entries re-embedded: {new.label()})" if report.recipe_changed else "")
                   + f"; {report.seconds:.0f}s")
    else:
        typer.echo(f"dry run: nothing stored; {report.seconds:.0f}s")


def print_decision(measured, chose: bool) -> None:
    d = measured.decision
    typer.echo(f"held-out questions: {measured.source}, {measured.queries} used" + (" (these chose)" if chose else ""))
    typer.echo(f"  MRR@10   current {d.current_score:.4f}   best in-sample {d.in_sample:.4f} ({measured.best.candidate.label()})"
               f"   cross-validated ({d.folds} folds) {d.cross_validated:.4f}")
    typer.echo(f"  gain over current {d.gain:+.4f}, 95% interval [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}], p = {d.p_value:.3f}")
    if d.change:
        typer.echo(f"  -> {measured.chosen.candidate.label()} (a significant gain)")
    elif d.picked == d.current:
        typer.echo(f"  -> keep {measured.current.candidate.label()}: no candidate beats it significantly")
    else:
        typer.echo(f"  -> keep {measured.current.candidate.label()}: the held-out gain of {measured.picked.candidate.label()} "
                   "is not significant (p >= 0.05) or not positive")


@app.command()
@fails_cleanly
def calibrate(
    index_dir: IndexDir,
    out_of_scope: Annotated[Optional[list[Path]], typer.Option("--out-of-scope", help="Questions that must get no answer, one per line (repeat the option: the files add up).")] = None,
    in_scope: Annotated[Optional[list[Path]], typer.Option("--in-scope", help="Questions that should be answered, one per line (repeat the option: the files add up).")] = None,
    queries: Queries = None,
    qrels: Qrels = None,
    target_precision: Annotated[Optional[float], typer.Option(help="Answer as much as possible while this share of answers is right.")] = None,
    allow_refusing: Annotated[bool, typer.Option("--allow-refusing", help="Allow a cut that refuses more than 5% of the right answers given.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the in-scope and out-of-scope score distributions and the cut to this PNG (needs matplotlib).")] = None,
    dry_run: DryRun = False,
    as_json: Json = False,
):
    """Choose the "no good answer" cut (min score) from example questions and store it in the index.

    Without it, an index has a cut made from its own collection (see `bertdex info`)."""
    from indexer.ingest.readers import read_questions
    from search.quality.calibrate import calibrate_index

    asked, judged = labelled(queries, qrels, required=False)
    result = calibrate_index(index_dir, out_of_scope=[q for path in out_of_scope or [] for q in read_questions(path)],
                             in_scope=[q for path in in_scope or [] for q in read_questions(path)], queries=asked,
                             qrels=judged, target_precision=target_precision, store=not dry_run,
                             allow_refusing=allow_refusing)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if plot:
        from search.quality.calibrate_plot import plot_calibration

        drawn = plot_calibration(result, plot)
    if as_json:
        echo_json({**result.to_dict(), **({"plot": str(drawn)} if plot else {})})
        return
    typer.echo(f"min score {result.min_score:.4f} for mode {result.mode}: {result.rule}")
    typer.echo(f"on {result.in_scope} in-scope and {result.out_of_scope} out-of-scope examples: answered {result.answered_right} "
               f"right, {result.answered_wrong} wrong; refused {result.refused_wrong} wrong, {result.refused_right} right; "
               f"precision {result.precision:.3f}, routed right {result.accuracy:.3f}")
    typer.echo("stored in the index" if result.stored else "dry run: nothing stored")
    if plot:
        typer.echo(f"score distributions and the cut: {drawn}")


@app.command()
@fails_cleanly
def feedback(
    index_dir: IndexDir,
    threshold: Annotated[Optional[float], typer.Option(help="Cosine at or above which two missed questions count as one need (default: measured on the index's groups).")] = None,
    limit: Annotated[int, typer.Option(help="Groups to show at most.")] = 20,
    as_json: Json = False,
):
    """The questions the index failed (no answer past the cut, or marked wrong), grouped by meaning, most asked first."""
    from search.quality.feedback import feedback_report

    report = feedback_report(index_dir, threshold=threshold)
    if as_json:
        echo_json(report.to_dict())
        return
    typer.echo(f"{report.logged} questions logged, {report.unanswered} with no answer past the cut; "
               f"{report.verdicts} verdicts: {report.marked_wrong} questions marked wrong, "
               f"{report.marked_right} with an answer marked right (`bertdex tune --feedback` learns from these)")
    typer.echo(f"grouped at cosine >= {report.threshold:.3f} ({report.threshold_source})")
    if not report.groups:
        typer.echo("no missed questions")
        return
    rows = []
    for group in report.groups[:limit]:
        first, others = group.questions[0], group.questions[1:]
        asked = first.question + "".join(f"\n  ~ {q.question}" for q in others[:3])
        asked += f"\n  (+{len(others) - 3} more)" if len(others) > 3 else ""
        reasons = ", ".join(part for part in (
            f"{sum(q.unanswered for q in group.questions)} unanswered" if any(q.unanswered for q in group.questions) else "",
            f"{sum(q.marked_wrong for q in group.questions)} marked wrong" if any(q.marked_wrong for q in group.questions) else "") if part)
        closest = f"{group.closest_key} {group.closest_score:.3f}" if group.closest_key else "-"
        rows.append([str(group.count), asked, reasons, closest])
    print_rows(["asked", "missed questions (grouped by meaning)", "why", "closest entry"], rows)
    if len(report.groups) > limit:
        typer.echo(f"... and {len(report.groups) - limit} more groups (--limit)")


# -- printing ---------------------------------------------------------------------------------------


def print_hits(made, show_question: bool, columns: Optional[list[str]], width: int) -> None:
    """A rich table of one question's answers (the matching window of a long text in bold, cells cut to
    `width`); with none, why, and the closest miss."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if show_question:
        console.print(Text(made.question, style="bold"))  # a question may hold [brackets]: no markup
    if not made.hits:
        console.print(made.why, markup=False, highlight=False)
        if made.closest is None:
            return
        console.print("the closest miss:", style="dim", markup=False, highlight=False)
    shown = made.hits or (made.closest,)
    answer_column = ["answer"] if any("answer" in hit.fields for hit in shown) else []  # its own column, not in "fields"
    names = columns or ["rank", "score", *(["band"] if made.cut is not None else []), "key", "text", *answer_column, "fields"]
    table = Table()
    for name in names:
        table.add_column("#" if name == "rank" else name, overflow="fold")
    for hit in shown:
        row = {**hit_row(made.question, hit), "answered": bool(made.hits), "band": made.band(hit), "why": made.why}
        table.add_row(*(hit_cell(hit, row, name, width, names) for name in names))
    console.print(table)
    if made.hits and made.below_cut:
        console.print(f"{made.below_cut} more below the cut {made.cut:.4f} ({made.cut_source})", style="dim",
                      markup=False, highlight=False)


def hit_cell(hit, row: dict, name: str, width: int, names=()):
    from rich.text import Text

    if name == "text":
        shown, span = excerpt(hit.text, hit.span, width)
        text = Text(shown)
        if span:
            text.stylize("bold", *span)
        return text
    if name == "fields":
        value = "; ".join(f"{field}: {value}" for field, value in hit.fields.items() if field not in names)
    elif name == "score":
        value = f"{hit.score:.4f}"
    elif name == "span":
        value = f"{hit.span[0]}-{hit.span[1]}" if hit.span else ""
    elif name == "variants":
        value = " ".join(hit.variants)
    else:
        value = "" if row.get(name) is None else str(row.get(name))
    return Text(cut(value, width))


def excerpt(text: str, span, width: int) -> tuple[str, Optional[tuple[int, int]]]:
    """At most `width` characters of `text`, starting a little before `span` (the matching window),
    and that window's place in what is shown.

    excerpt("abcdefghij", (6, 8), 5) -> ("…fghij", (2, 4))
    """
    if not width or len(text) <= width:
        return text, tuple(span) if span else None
    start = 0 if not span else max(0, min(span[0] - width // 8, len(text) - width))
    shown = ("…" if start else "") + text[start:start + width] + ("…" if start + width < len(text) else "")
    if not span:
        return shown, None
    offset = (1 if start else 0) - start
    return shown, (span[0] + offset, min(span[1], start + width) + offset)


def print_rows_as(output: str, columns: list[str], rows: list[dict]) -> None:
    """Rows as nl (one JSON object each), csv or tsv (a header, then values; lists joined by spaces)."""
    import csv

    if output == "nl":
        for row in rows:
            echo_json({name: row.get(name) for name in columns})
        return
    writer = csv.writer(sys.stdout, delimiter="\t" if output == "tsv" else ",", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(name) is None else
                         " ".join(map(str, row[name])) if isinstance(row.get(name), list) else
                         str(row[name]).lower() if isinstance(row.get(name), bool) else row[name]
                         for name in columns])


def print_rows(columns, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def preview(vector, count: int = 3) -> str:
    return "[" + ", ".join(f"{float(x):.4f}" for x in vector[:count]) + ", ...]"


RATE_FROM = 100  # a rate over fewer embedded entries mostly measures the model's loading


def print_report(report, as_json: bool, rename=lambda message: message, quiet: bool = False) -> None:
    """The report of index/add: JSON, or a summary line (and the recipe); --quiet: only warnings, on stderr."""
    if as_json:
        data = dict(report.__dict__)
        data["problems"] = [rename(str(p)) for p in report.problems]
        data["rate"] = round(report.rate, 1)
        echo_json(data)
        return
    embedded = report.added + report.updated
    rate = f" ({report.rate:.0f} entries/s)" if embedded >= RATE_FROM else ""
    done = (f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged" if report.committed
            else f"nothing changed ({report.unchanged} unchanged), nothing written")
    if not quiet:
        typer.echo(f"{report.folder}: {done}; {report.documents} entries, {report.vectors} vectors; {report.seconds:.1f}s{rate}")
    if report.recipe_reason and not quiet:
        typer.echo(f"recipe: {report.recipe_reason}")
    if report.truncated:
        typer.echo(f"warning: {report.truncated} texts were longer than the model's window and were cut (--window splits them)", err=True)
    if report.split and not quiet:
        typer.echo(f"{report.split_texts} texts longer than the model's window ({report.max_length} tokens) were split "
                   f"into windows of {report.window_length} tokens ({report.split} vectors more)", err=True)
    for problem in report.problems:
        typer.echo(f"skipped {rename(str(problem))}", err=True)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)


class progress_reporter:
    """On a terminal's stderr: a spinner while the input is read and the model loads, then a bar that
    moves per batch. Elsewhere plain lines (every 5 s and at the end); nothing with --quiet."""

    def __init__(self, quiet: bool, label: str):
        import time

        self.quiet, self.label, self.bar, self.task = quiet, label, None, None
        self.started = self.last = time.monotonic()
        self.first_done = None

    def __enter__(self):
        if self.quiet:
            return None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            rate = TextColumn("{task.fields[rate]}")
            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                rate, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"{self.label}: reading the input", total=None, rate="")
        return self.update

    def update(self, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if done == 0:  # the input is checked: the model loads next
            self.first_done = (now, 0)
            if self.bar is not None:  # a plain line here would come before any error line of the model's
                self._show(f"{self.label}: loading the model", 0, total, "", "")
            return
        if self.first_done is None or self.first_done[1] == 0:  # the first batch: the model has loaded
            self.first_done = (now, done)
        seconds = now - self.first_done[0]
        rate = f"{(done - self.first_done[1]) / seconds:.0f}/s" if seconds > 0 else ""
        if self.bar is not None or now - self.last >= 5 or done == total:
            self.last = now
            self._show(self.label, done, total, rate, f"{self.label}: {done}/{total}" + (f" ({rate})" if rate else ""))

    def _show(self, description: str, done: int, total: int, rate: str, line: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=description, completed=done, total=total, rate=rate)
        else:
            typer.echo(line, err=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command `argv` names: typer reads every command's options to build the whole
    group (~0.1 s of a cold question); the whole app for help, the tutorial group or an unknown name."""
    import copy

    import typer.main

    for command in app.registered_commands:
        if argv and argv[0] == (command.name or typer.main.get_command_name(command.callback.__name__)):
            alone = copy.copy(app)
            alone.registered_commands, alone.registered_groups = [command], []
            return alone
    return app


# -- examples in every command's --help --------------------------------------------------------------

EXAMPLES = {
    "index": ["bertdex index runs/faq examples/faq_en.csv --text-field question --group-field group",
              "bertdex index runs/faq-qa faq.csv -t question -t answer --id-field id",
              "cat faq.jsonl | bertdex index runs/faq -"],
    "add": ["bertdex add runs/faq examples/faq_en.csv", "bertdex add runs/faq new.jsonl --on-error skip"],
    "delete": ["bertdex delete runs/faq en-007 en-008"],
    "verify": ["bertdex verify runs/faq", "bertdex verify runs/faq --texts 0 --json"],
    "repair": ["bertdex repair runs/faq"],
    "compact": ["bertdex compact runs/faq", "bertdex compact runs/faq --json"],
    "query": ['bertdex query runs/faq "I forgot my password"',
              'bertdex query runs/faq "refund for a broken item" -k 3 --where category=billing',
              "bertdex query runs/faq --file questions.txt --csv > answers.csv",
              'echo "where is my parcel?" | bertdex query runs/faq - --answer-only',
              "Exit status: 0 every question answered; 1 a question got no good answer (--no-fail: 0); 2 usage: "
              "a bad option, a value out of range, a --where or --fields field no entry has "
              "(docs/index-folder.md, Exit statuses)."],
    "get": ["bertdex get runs/faq en-001", "bertdex get runs/faq en-001 en-002 --json"],
    "export": ["bertdex export runs/faq -o runs/faq.jsonl",
               "bertdex index runs/faq-copy runs/faq.jsonl --format jsonl -t question --id-field id --group-field group"],
    "duplicates": ["bertdex duplicates runs/faq", "bertdex duplicates runs/faq --threshold 0.85 --csv"],
    "info": ["bertdex info runs/faq", "bertdex info runs/faq --json"],
    "models": ["bertdex models", "bertdex models --json"],
    "doctor": ["bertdex doctor", "bertdex doctor --remeasure"],
    "serve": ["bertdex serve runs/faq", "BERTDEX_API_KEY=secret bertdex serve runs/faq --host 0.0.0.0 --port 8080",
              "bertdex serve runs/faq --read-only --workers 4 --log-format json"],
    "eval": ["bertdex eval runs/faq --queries examples/eval_en/queries.jsonl --qrels examples/eval_en/qrels.tsv"],
    "tune": ["bertdex tune runs/faq", "bertdex tune runs/faq --dry-run --same-model", "bertdex tune runs/faq --feedback"],
    "calibrate": ["bertdex calibrate runs/faq --out-of-scope examples/out_of_scope.txt",
                  "bertdex calibrate runs/faq --out-of-scope off.txt --in-scope on.txt --target-precision 0.9"],
    "feedback": ["bertdex feedback runs/faq", "bertdex feedback runs/faq --json"],
    "tokens": ['bertdex tutorial tokens "The bank raised its rates."'],
    "layers": ['bertdex tutorial layers "The bank raised its rates." --histogram runs/h.png'],
    "words": ['bertdex tutorial words "The bank raised its rates." --out runs/words.json'],
    "similar-word": ['bertdex tutorial similar-word "I sat on the river bank." "The bank raised its rates." --word bank'],
    "embed": ['bertdex tutorial embed "where is my parcel?" --index runs/faq'],
}


def with_examples(typer_app: typer.Typer) -> None:
    """Each command's examples as the epilog of its --help (one line each)."""
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        if name in EXAMPLES:
            rest = [line for line in EXAMPLES[name] if line.startswith("Exit status")]
            lines = [line for line in EXAMPLES[name] if line not in rest]
            info.epilog = "\n\n".join(["Examples:", *(f"  {line}" for line in lines), *rest])


with_examples(app)
with_examples(tutorial)


def main() -> int:
    """Run the app; a usage error (bad option, unknown command) is one line on stderr too, exit 2."""
    try:
        code = app_for(sys.argv[1:])(standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        typer.echo("interrupted: nothing from this command was committed", err=True)
        return 130
    except Exception as error:
        show = getattr(error, "format_message", None)
        if not callable(show):  # not typer's usage error: a bug, shown as one
            raise
        message = show()
        if type(error).__name__ == "NoArgsIsHelpError":  # `bertdex` alone: the help, as typer prints it
            typer.echo(message, err=True)
        else:
            command = getattr(getattr(error, "ctx", None), "command_path", "bertdex")
            typer.echo(f"error: {' '.join(message.split())} (see `{command} --help`)", err=True)
        return getattr(error, "exit_code", 2)
    return code if isinstance(code, int) else 0


# commands that leave nothing behind to finish once their output is out: a question and `info`
QUICK_EXIT = ("query", "info")


def run() -> None:
    """The `bertdex` command: `main()`, then, after a question or `info`, an exit that skips tearing down the
    libraries loaded (ONNX Runtime's session, FAISS, numpy: ~50 ms of a ~0.45 s question from the shell) once
    the output is flushed. Both only read the index; every other command exits as Python does."""
    code = main()
    if sys.argv[1:2] and sys.argv[1] in QUICK_EXIT:
        import logging

        logging.shutdown()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, ValueError):
            pass  # a reader that went away (`| head -1`): nothing left to say
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()

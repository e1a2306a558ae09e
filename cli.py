"""The `bertdex` command: typer options -> one library call -> print. No logic lives here.

People get rich tables; programs get JSON lines (--json). A BertdexError becomes one line on
stderr and exit status 1.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="bertdex: semantic search over BERT sentence embeddings (FAISS + SQLite).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

IndexDir = Annotated[Path, typer.Argument(help="Index folder.")]
Model = Annotated[Optional[str], typer.Option("--model", help="Local model folder or hub name (default: bundled all-MiniLM-L6-v2).")]
Layer = Annotated[Optional[int], typer.Option("--layer", help="Hidden state to pool: 0 = embeddings, negative from the top (-2 = second-to-last). Default: auto.")]
Pooling = Annotated[Optional[str], typer.Option("--pooling", help="mean, max, cls or mean-max. Default: auto.")]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def fails_cleanly(command):
    """Turn a BertdexError into one line on stderr and exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from indexer.errors import BertdexError

        try:
            return command(*args, **kwargs)
        except BertdexError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing from this command was committed", err=True)
            raise typer.Exit(130) from None

    return wrapper


def echo_json(data) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False))


# -- indexing ---------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def index(
    data: Annotated[Path, typer.Argument(help="CSV/TSV with a header, JSON Lines, or plain text (one entry a line).")],
    index_dir: Annotated[Path, typer.Option("--index", "-i", help="Index folder to create.")],
    text_field: Annotated[list[str], typer.Option("--text-field", "-t", help="Field to embed; repeat to join several with a space. Default: text/question.")] = [],
    id_field: Annotated[Optional[str], typer.Option(help="Field holding each entry's key. Default: id/_id/key, else the line number.")] = None,
    group_field: Annotated[Optional[str], typer.Option(help="Field grouping question variants of one answer; results show one row per group.")] = None,
    model: Model = None,
    layer: Layer = None,
    pooling: Pooling = None,
    exclude_special: Annotated[bool, typer.Option(help="Leave [CLS]/[SEP] out of mean/max pooling.")] = False,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per window (default: the model's limit, at most 512).")] = None,
    window: Annotated[bool, typer.Option("--window/--truncate", help="Split texts longer than --max-length into overlapping windows (default), or cut them.")] = True,
    stride: Annotated[Optional[int], typer.Option(help="Tokens shared by consecutive windows (default: max-length / 8).")] = None,
    replace: Annotated[bool, typer.Option(help="Rebuild an existing index in place (one commit).")] = False,
    on_error: Annotated[str, typer.Option(help="fail: refuse the whole file at the first bad row; skip: leave bad rows out.")] = "fail",
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, tsv, jsonl or text (default: from the extension).")] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16 (auto: bf16 where the CPU has it natively).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Torch threads (default: all cores).")] = None,
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Embed every entry of DATA and write a new index folder."""
    from indexer import DEFAULT_MODEL, build_index

    with progress_reporter(quiet, "indexing") as progress:
        report = build_index(
            data, index_dir, text_fields=text_field, id_field=id_field, group_field=group_field,
            model=model or DEFAULT_MODEL, layer=layer, pooling=pooling, exclude_special=exclude_special,
            max_length=max_length, window=window, stride=stride, replace=replace, on_error=on_error,
            fmt=fmt, precision=precision, threads=threads, progress=progress,
        )
    print_report(report, as_json)


@app.command()
@fails_cleanly
def add(
    index_dir: IndexDir,
    data: Annotated[Path, typer.Argument(help="File of entries to add or update by key.")],
    text_field: Annotated[list[str], typer.Option("--text-field", "-t", help="Default: as when the index was built.")] = [],
    id_field: Annotated[Optional[str], typer.Option(help="Default: as when the index was built.")] = None,
    group_field: Annotated[Optional[str], typer.Option(help="Default: as when the index was built.")] = None,
    on_error: Annotated[str, typer.Option(help="fail or skip.")] = "fail",
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, tsv, jsonl or text.")] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Torch threads.")] = None,
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Add entries, or update them by key: unchanged texts are not re-embedded."""
    from indexer import add_documents

    with progress_reporter(quiet, "adding") as progress:
        report = add_documents(index_dir, data, text_fields=text_field, id_field=id_field, group_field=group_field,
                               on_error=on_error, fmt=fmt, precision=precision, threads=threads, progress=progress)
    print_report(report, as_json)


@app.command()
@fails_cleanly
def delete(
    index_dir: IndexDir,
    keys: Annotated[list[str], typer.Argument(help="Keys of the entries to remove.")],
    as_json: Json = False,
):
    """Remove entries by key, in one commit."""
    from indexer import delete_documents

    removed, missing = delete_documents(index_dir, keys)
    if as_json:
        echo_json({"deleted": removed, "missing": missing})
        return
    typer.echo(f"deleted {removed} entr{'y' if removed == 1 else 'ies'}")
    if missing:
        typer.echo(f"not in the index: {', '.join(missing)}", err=True)


@app.command()
@fails_cleanly
def verify(index_dir: IndexDir, as_json: Json = False):
    """Check that the FAISS index, the documents and the keyword table agree."""
    from indexer.verify import verify_index

    report = verify_index(index_dir)
    if as_json:
        echo_json(report.to_dict())
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)


# -- searching --------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def query(
    index_dir: IndexDir,
    questions: Annotated[Optional[list[str]], typer.Argument(help="Questions; '-' reads one per line from stdin.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Answers per question.")] = 5,
    from_file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Read questions from a file, one per line.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="dense, keyword or hybrid (default: the index's tuned mode, else dense).")] = None,
    weight: Annotated[Optional[float], typer.Option(help="Hybrid: the dense side's share, 0..1.")] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Drop answers scoring below this; none left = 'no good answer'.")] = None,
    where: Annotated[list[str], typer.Option("--where", help="Filter on a stored field: NAME=VALUE (repeatable).")] = [],
    model: Model = None,
    layer: Layer = None,
    pooling: Pooling = None,
    as_json: Json = False,
):
    """Answer questions with the closest entries, ranked by cosine similarity."""
    from search import Searcher

    asked = list(questions or [])
    if asked == ["-"]:
        asked = [line.strip() for line in sys.stdin if line.strip()]
    if from_file:
        asked += [line.strip() for line in from_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not asked:
        raise typer.BadParameter("give a question, '-' for stdin, or --file")
    filters = dict(parse_where(item) for item in where)
    searcher = Searcher(index_dir, model=model, layer=layer, pooling=pooling)
    results = searcher.search_many(asked, k, mode=mode, min_score=min_score, weight=weight, filters=filters)
    for question, hits in zip(asked, results):
        if as_json:
            echo_json({"question": question, "answered": bool(hits), "hits": [hit.to_dict() for hit in hits]})
        else:
            print_hits(question, hits, len(asked) > 1)


def parse_where(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"--where {item!r}: use NAME=VALUE")
    return name, value


@app.command()
@fails_cleanly
def info(index_dir: IndexDir, as_json: Json = False):
    """Show an index's model, recipe (and why), counts and settings."""
    from search.info import index_info

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


# -- printing ---------------------------------------------------------------------------------------


def print_hits(question: str, hits, show_question: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if show_question:
        console.print(f"[bold]{question}[/bold]")
    if not hits:
        console.print("no good answer (nothing passed the score cut)")
        return
    table = Table()
    for column in ("#", "score", "key", "text", "fields"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        fields = "; ".join(f"{name}: {value}" for name, value in hit.fields.items())
        table.add_row(str(hit.rank), f"{hit.score:.4f}", hit.key, hit.text, fields)
    console.print(table)


def print_report(report, as_json: bool) -> None:
    if as_json:
        data = dict(report.__dict__)
        data["problems"] = [str(p) for p in report.problems]
        data["rate"] = round(report.rate, 1)
        echo_json(data)
        return
    typer.echo(
        f"{report.folder}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged; "
        f"{report.documents} entries, {report.vectors} vectors; {report.seconds:.1f}s ({report.rate:.0f} entries/s)"
    )
    if report.recipe_reason:
        typer.echo(f"recipe: {report.recipe_reason}")
    if report.truncated:
        typer.echo(f"warning: {report.truncated} texts were longer than the model's window and were cut (--window splits them)", err=True)
    if report.split:
        typer.echo(f"{report.split} extra windows for texts longer than the model's window", err=True)
    for problem in report.problems:
        typer.echo(f"skipped {problem}", err=True)


class progress_reporter:
    """A rich progress bar on a terminal's stderr, plain lines every 5 s otherwise, nothing with --quiet."""

    def __init__(self, quiet: bool, label: str):
        import time

        self.quiet, self.label, self.bar, self.task = quiet, label, None, None
        self.started = self.last = time.monotonic()

    def __enter__(self):
        if self.quiet:
            return None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            rate = TextColumn("{task.fields[rate]}/s")
            self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), rate, TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
        return self.update

    def update(self, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        rate = done / max(now - self.started, 1e-9)
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(self.label, total=total, rate="0")
            self.bar.update(self.task, completed=done, rate=f"{rate:.0f}")
            return
        if now - self.last >= 5 or done == total:
            self.last = now
            eta = (total - done) / rate if rate else 0
            typer.echo(f"{self.label}: {done}/{total} ({rate:.0f}/s, ETA {eta:.0f}s)", err=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


if __name__ == "__main__":
    app()

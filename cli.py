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

IndexDir = Annotated[Path, typer.Argument(help="Index folder.")]
Model = Annotated[Optional[str], typer.Option("--model", help="Local model folder or hub name (default: bundled all-MiniLM-L6-v2).")]
Layer = Annotated[Optional[int], typer.Option("--layer", help="Hidden state to pool: 0 = embeddings, negative from the top (-2 = second-to-last). Default: auto.")]
Pooling = Annotated[Optional[str], typer.Option("--pooling", help="mean, max, cls or mean-max. Default: auto.")]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Backend = Annotated[str, typer.Option("--backend", help="auto, onnx or torch: auto runs fp32 on ONNX Runtime (same vectors, faster), else PyTorch.")]
Ray = Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Embed on Ray: alone, a local Ray with this machine's cores; `auto` or ray://HOST:10001, an existing cluster.")]
RayWorkers = Annotated[Optional[int], typer.Option("--ray-workers", min=1, help="Encoder actors on Ray (default: one per CPU of the cluster).")]
RayGpus = Annotated[float, typer.Option("--ray-gpus", min=0, help="GPUs each Ray actor reserves (default 0).")]
Checkpoint = Annotated[int, typer.Option("--checkpoint", min=1, help="A load of more entries commits every this many; killed, the same command run again resumes.")]


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
    window_length: Annotated[int, typer.Option(help="Tokens per window of a long text (texts that fit in --max-length stay whole).")] = 128,
    stride: Annotated[Optional[int], typer.Option(help="Tokens shared by consecutive windows (default: a quarter of the window).")] = None,
    replace: Annotated[bool, typer.Option(help="Rebuild an existing index in place (one commit).")] = False,
    on_error: Annotated[str, typer.Option(help="fail: refuse the whole file at the first bad row; skip: leave bad rows out.")] = "fail",
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, tsv, jsonl or text (default: from the extension).")] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16 (auto: bf16 where the CPU has it natively).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Threads (default: all cores).")] = None,
    backend: Backend = "auto",
    index_type: Annotated[str, typer.Option("--index-type", help="flat (exact), hnsw, ivf, sq8 (8-bit), ivfpq (compressed, re-scored), or auto: flat up to 20,000 vectors, HNSW above, compressed when float32 would not fit in memory; ANN search depth is tuned at each commit to recall@10 >= 0.98 vs exact.")] = "auto",
    ray: Ray = None,
    ray_workers: RayWorkers = None,
    ray_gpus: RayGpus = 0,
    checkpoint: Checkpoint = 50_000,
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Embed every entry of DATA and write a new index folder."""
    from indexer import DEFAULT_MODEL, build_index

    with progress_reporter(quiet, "indexing") as progress:
        report = build_index(
            data, index_dir, text_fields=text_field, id_field=id_field, group_field=group_field,
            model=model or DEFAULT_MODEL, layer=layer, pooling=pooling, exclude_special=exclude_special,
            max_length=max_length, window=window, window_length=window_length, stride=stride, replace=replace,
            on_error=on_error,
            fmt=fmt, precision=precision, threads=threads, backend=backend, progress=progress, index_type=index_type,
            checkpoint=checkpoint, ray=ray, ray_workers=ray_workers, ray_gpus=ray_gpus,
        )
    print_report(report, as_json)
    from indexer.store.coverage import index_warnings

    for warning in index_warnings(index_dir):
        typer.echo(f"warning: {warning}", err=True)


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
    threads: Annotated[Optional[int], typer.Option(help="Threads (default: all cores).")] = None,
    backend: Backend = "auto",
    ray: Ray = None,
    ray_workers: RayWorkers = None,
    ray_gpus: RayGpus = 0,
    checkpoint: Checkpoint = 50_000,
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Add entries, or update them by key: unchanged texts are not re-embedded."""
    from indexer import add_documents

    with progress_reporter(quiet, "adding") as progress:
        report = add_documents(index_dir, data, text_fields=text_field, id_field=id_field, group_field=group_field,
                               on_error=on_error, fmt=fmt, precision=precision, threads=threads, backend=backend,
                               progress=progress, checkpoint=checkpoint, ray=ray, ray_workers=ray_workers,
                               ray_gpus=ray_gpus)
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
    from indexer.store.verify import verify_index

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


# -- tutorial ---------------------------------------------------------------------------------------
# The BERT embedding tutorial, one command per step: tokens, layers, words, similar-word, embed.

TutorialText = Annotated[str, typer.Argument(help="The text to look at.")]
Strategy = Annotated[str, typer.Option(help="Word vector from the hidden states: concat-last4, sum-last4, last or second-last.")]
Merge = Annotated[str, typer.Option(help="A word cut into WordPiece pieces becomes: mean, first or last piece.")]
VectorsOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the vectors: .json (vectors inside) or .npy (and a .json of labels beside it).")]


@app.command("tokens")
@fails_cleanly
def tutorial_tokens(text: TutorialText, model: Model = None, as_json: Json = False):
    """Show TEXT's WordPiece tokens and ids, the [UNK] count, truncation, and a warning when Hangul falls apart into jamo."""
    from indexer import DEFAULT_MODEL
    from indexer.tutorial.tokens import load_encoder, token_table

    table = token_table(load_encoder(model or DEFAULT_MODEL), text)
    if as_json:
        echo_json(table.to_dict())
        return
    rows = [(str(t.position), t.token, str(t.id), "" if t.word is None else str(t.word), text[t.start:t.end],
             "" if t.kept else "yes") for t in table.tokens]
    print_rows(("#", "token", "id", "word", "text", "cut"), rows)
    typer.echo(f"{len(table.tokens)} tokens, window {table.max_length}: {'TRUNCATED' if table.truncated else 'not truncated'}; "
               f"[UNK]: {table.unknown}; lower-cases: {'yes' if table.lowercase else 'no'}; "
               f"Hangul into jamo: {'yes' if table.decomposes_hangul else 'no'}")
    for warning in table.warnings:
        typer.echo(f"warning: {warning}", err=True)


@app.command("layers")
@fails_cleanly
def tutorial_layers(
    text: TutorialText,
    model: Model = None,
    histogram: Annotated[Optional[Path], typer.Option(help="Write a PNG histogram of one token's values in one layer (needs matplotlib).")] = None,
    layer: Annotated[int, typer.Option("--layer", help="Histogram: hidden state (0 = embeddings, negative from the top).")] = 5,
    token: Annotated[int, typer.Option("--token", help="Histogram: token position ([CLS] is 0).")] = 5,
    as_json: Json = False,
):
    """Show the hidden states' shape [layers x tokens x hidden] and each layer's value range."""
    from indexer import DEFAULT_MODEL
    from indexer.tutorial.tokens import layer_report, load_encoder, token_histogram

    encoder = load_encoder(model or DEFAULT_MODEL)
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


@app.command("words")
@fails_cleanly
def tutorial_words(text: TutorialText, model: Model = None, strategy: Strategy = "sum-last4", merge: Merge = "mean",
                   out: VectorsOut = None, as_json: Json = False):
    """One contextual vector per word of TEXT; a word cut into pieces comes back as one word."""
    from indexer import DEFAULT_MODEL
    from indexer.tutorial.tokens import load_encoder
    from indexer.tutorial.words import save_vectors, word_vectors

    name = model or DEFAULT_MODEL
    result = word_vectors(load_encoder(name), text, strategy=strategy, merge=merge)
    if out:
        about = {"text": text, "model": name, "strategy": strategy, "merge": merge}
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


@app.command("similar-word")
@fails_cleanly
def tutorial_similar_word(
    sentences: Annotated[list[str], typer.Argument(help="Two or more sentences that use the word.")],
    word: Annotated[str, typer.Option("--word", "-w", help="The word to compare (Korean: may be glued to a particle, 배 in 배를).")],
    model: Model = None,
    strategy: Strategy = "sum-last4",
    merge: Merge = "mean",
    as_json: Json = False,
):
    """Cosine similarity of one word's contextual vectors across sentences, as a matrix."""
    from indexer import DEFAULT_MODEL
    from indexer.tutorial.tokens import load_encoder
    from indexer.tutorial.words import similar_word

    result = similar_word(load_encoder(model or DEFAULT_MODEL), sentences, word, strategy=strategy, merge=merge)
    if as_json:
        echo_json(result.to_dict())
        return
    count = len(result.occurrences)
    print_rows(("#", "sentence", "pieces", *map(str, range(1, count + 1))),
               [(str(i + 1), o.sentence, " ".join(o.pieces), *(f"{s:.3f}" for s in result.matrix[i]))
                for i, o in enumerate(result.occurrences)])
    typer.echo(f"cosine of {word!r} ({strategy}, pieces merged by {merge})")


@app.command("embed")
@fails_cleanly
def tutorial_embed(
    texts: Annotated[list[str], typer.Argument(help="Texts; '-' reads one per line from stdin.")],
    index_dir: Annotated[Optional[Path], typer.Option("--index", "-i", help="Embed as this index embeds its questions.")] = None,
    model: Model = None,
    layer: Layer = None,
    pooling: Pooling = None,
    out: VectorsOut = None,
    as_json: Json = False,
):
    """Sentence vectors (L2-normalized) by an index's recipe or a chosen one."""
    from indexer.tutorial.words import save_vectors, sentence_vectors

    if texts == ["-"]:
        texts = [line.strip() for line in sys.stdin if line.strip()]
    result = sentence_vectors(texts, index=index_dir, model=model, layer=layer, pooling=pooling)
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
        typer.echo(f"recipe: {recipe.pooling} of hidden state {recipe.layer} of {recipe.model}, "
                   f"{recipe.dimension} features ({result.reason})")
        print_rows(("#", "text", "first values"),
                   [(str(i), text, preview(vector)) for i, (text, vector) in enumerate(zip(result.texts, result.vectors))])
    if result.truncated:
        typer.echo(f"warning: {result.truncated} texts were longer than the model's window and were cut", err=True)


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


# -- http service -----------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def serve(
    index_dir: IndexDir,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs an API key or --read-only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File holding the API key that writes need (else env BERTDEX_API_KEY).")] = None,
    read_only: Annotated[bool, typer.Option(help="Refuse every write, even with a key.")] = False,
    batch_window_ms: Annotated[float, typer.Option(help="How long a question waits for others to share its forward pass.")] = 2.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Most questions in one forward pass (1: no micro-batching).")] = 64,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads (default: all cores; 1 is faster on a busy machine).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes on one port over the same folder; more than 1 serves read-only.")] = 1,
):
    """Serve the index over HTTP: POST /search, /documents, /health, /info, a search page at /."""
    import os

    from search.server.app import check_bind, serve as run_server

    api_key = os.environ.get("BERTDEX_API_KEY") or None
    if api_key_file is not None:
        try:
            api_key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise typer.BadParameter(f"--api-key-file {api_key_file}: {error.strerror}") from None
    writable = check_bind(host, api_key, read_only or workers > 1)
    access = "writes need the API key" if writable else "read-only (no API key, --read-only, or --workers > 1)"
    typer.echo(f"starting: {index_dir} on http://{host}:{port}/ ({access}; API docs at /docs)", err=True)
    run_server(index_dir, host=host, port=port, api_key=api_key, read_only=read_only,
               batch_window=batch_window_ms / 1000, max_batch=max_batch, threads=threads, workers=workers)


# -- answer quality ---------------------------------------------------------------------------------

Queries = Annotated[Optional[Path], typer.Option("--queries", help="BEIR queries.jsonl ({\"_id\", \"text\"} per line).")]
Qrels = Annotated[Optional[Path], typer.Option("--qrels", help="BEIR qrels.tsv (query-id, corpus-id, score).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Measure and print, but store nothing in the index.")]


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
    mode: Annotated[Optional[str], typer.Option(help="dense, keyword or hybrid (default: the index's tuned mode).")] = None,
    weight: Annotated[Optional[float], typer.Option(help="Hybrid: the dense side's share, 0..1.")] = None,
    per_query: Annotated[bool, typer.Option("--per-query", help="Also show each query's result.")] = False,
    as_json: Json = False,
):
    """Measure an index on labelled queries: MRR@10, nDCG@10, Recall@1/5/10, hit@1."""
    from search.quality.evaluate import evaluate_index

    labelled(queries, qrels, required=True)
    result = evaluate_index(index_dir, queries, qrels, mode=mode, weight=weight)
    if as_json:
        echo_json(result.to_dict(per_query))
        return
    if per_query:
        print_rows(["query", "mrr@10", "hit@1", "top answers", "relevant"],
                   [[r.query_id, f"{r.metrics['mrr@10']:.3f}", f"{r.metrics['hit@1']:.0f}", " ".join(r.ranked[:3]),
                     " ".join(r.relevant[:3])] for r in result.per_query])
    typer.echo(f"{result.queries} queries, mode {result.mode}" + (f" (weight {result.weight})" if result.weight is not None else "")
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
    dry_run: DryRun = False,
    as_json: Json = False,
):
    """Try layer x pooling x keyword/hybrid fusion on held-out questions; store the best in the index."""
    from search.quality.tune import tune_index

    asked, judged = labelled(queries, qrels, required=False)
    report = tune_index(index_dir, queries=asked, qrels=judged, group_field=group_field, store=not dry_run,
                        max_queries=max_queries)
    if as_json:
        echo_json(report.to_dict())
        return
    rows = []
    for trial in report.trials:
        mark = "best" if trial.candidate == report.best.candidate else ("current" if trial.candidate == report.current.candidate else "")
        m = trial.metrics
        rows.append([mark, trial.candidate.label(), f"{m['mrr@10']:.4f}", f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.3f}", f"{m['hit@1']:.3f}"])
    print_rows(["", "tried", "mrr@10", "ndcg@10", "recall@10", "hit@1"], rows)
    typer.echo(f"held-out questions: {report.source}, {report.queries} used")
    typer.echo(f"best: {report.best.candidate.label()} (MRR@10 {report.best.metrics['mrr@10']:.4f}; before: "
               f"{report.current.metrics['mrr@10']:.4f}); 2-fold held-out estimate {report.heldout_mrr:.4f}")
    if report.stored:
        typer.echo("stored in the index" + (" (entries re-embedded with the new layer/pooling)" if report.recipe_changed else "")
                   + f"; {report.seconds:.0f}s")
    else:
        typer.echo(f"dry run: nothing stored; {report.seconds:.0f}s")


@app.command()
@fails_cleanly
def calibrate(
    index_dir: IndexDir,
    out_of_scope: Annotated[Optional[Path], typer.Option("--out-of-scope", help="Questions that must get no answer, one per line.")] = None,
    in_scope: Annotated[Optional[Path], typer.Option("--in-scope", help="Questions that should be answered, one per line.")] = None,
    queries: Queries = None,
    qrels: Qrels = None,
    target_precision: Annotated[Optional[float], typer.Option(help="Answer as much as possible while this share of answers is right.")] = None,
    dry_run: DryRun = False,
    as_json: Json = False,
):
    """Choose the "no good answer" cut (min score) from example questions and store it in the index."""
    from search.quality.calibrate import calibrate_index, read_questions

    asked, judged = labelled(queries, qrels, required=False)
    result = calibrate_index(index_dir, out_of_scope=read_questions(out_of_scope) if out_of_scope else [],
                             in_scope=read_questions(in_scope) if in_scope else [], queries=asked, qrels=judged,
                             target_precision=target_precision, store=not dry_run)
    if as_json:
        echo_json(result.to_dict())
        return
    typer.echo(f"min score {result.min_score:.4f} for mode {result.mode}: {result.rule}")
    typer.echo(f"on {result.in_scope} in-scope and {result.out_of_scope} out-of-scope examples: answered {result.answered_right} "
               f"right, {result.answered_wrong} wrong; refused {result.refused_wrong} wrong, {result.refused_right} right; "
               f"precision {result.precision:.3f}, routed right {result.accuracy:.3f}")
    typer.echo("stored in the index" if result.stored else "dry run: nothing stored")


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

"""A fork server for the fault-injection tests: loads the real model once, then runs each write
(build, rebuild, add) in a forked child that the test SIGKILLs at a random moment.

Protocol, one JSON object per line: stdin {"op": "build"|"add", "folder", "data", "replace", "die_at"};
stdout {"event": "start", "pid"}, then {"event": "committed", "generation"} from the child when
its commit returned, then {"event": "exit", "status"} once the child is gone.

`die_at` makes the child SIGKILL itself at one exact step of the commit (see `die_at`): "partial"
(the .partial FAISS file written), "renamed" (renamed to vectors.<G>.faiss), "before-commit" and
"after-commit" (around SQLite's COMMIT); "nth": at that step's nth time (2: in the merge that follows a
segment's commit). "tier_unit" sets indexer.store.segments.TIER_UNIT in the child (merges of small
segments). "delete": keys to delete (op "delete"). The hooks wrap functions inside the child only.
Optionally "checkpoint", "chunk" (entries per chunk, default 256), "ray" (a Ray address), "index_type"
(a build's) and "spool" (indexer.store.streamed's SPOOL_VECTORS and CHUNK);
then {"event": "progress", "done"} after each chunk the child wrote.
"""

from __future__ import annotations

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indexer.ingest.build import add_documents, build_index  # noqa: E402
from indexer.embed.resolve import resolve_recipe  # noqa: E402


def say(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_at(step: str, nth: int = 1) -> None:
    """Wrap the commit's steps so that this process kills itself right at the `nth` time of `step`."""
    import faiss

    from indexer.store import folder

    seen = [0]

    def due() -> bool:
        seen[0] += 1
        return seen[0] == nth

    if step == "partial":
        write = faiss.write_index

        def write_then_die(index, path):
            write(index, path)
            if str(path).endswith(".partial") and os.path.basename(str(path)).startswith("vectors.") and due():
                die()
        folder.faiss.write_index = write_then_die
    elif step == "renamed":
        replace = os.replace

        def replace_then_die(source, target):
            replace(source, target)
            if str(target).endswith(".faiss") and os.path.basename(str(target)).startswith("vectors.") and due():
                die()
        folder.os.replace = replace_then_die
    elif step in ("before-commit", "after-commit"):
        commit = folder._commit_sqlite

        def commit_and_die(db):
            if step == "before-commit" and due():
                die()
            commit(db)
            if step == "after-commit" and due():
                die()
        folder._commit_sqlite = commit_and_die
    else:
        raise ValueError(f"unknown step {step!r}")


def child(request: dict, resolved) -> None:
    if request.get("die_at"):
        die_at(request["die_at"], request.get("nth", 1))
    if request.get("tier_unit"):
        from indexer.store import segments

        segments.TIER_UNIT = request["tier_unit"]
    options = {"chunk_size": request.get("chunk", 256), "ray": request.get("ray"),
               "progress": (lambda done, total: say(event="progress", done=done)) if request.get("progress") else None}
    if "checkpoint" in request:
        options["checkpoint"] = request["checkpoint"]
    if request.get("spool"):  # a streamed build (sq8, ivfpq) spools and codes this many vectors at a time
        from indexer.store import streamed

        streamed.SPOOL_VECTORS = streamed.CHUNK = request["spool"]
    if request.get("index_type") and request["op"] == "build":
        options["index_type"] = request["index_type"]
    if request["op"] == "delete":
        from indexer.ingest.build import delete_documents

        removed, _ = delete_documents(request["folder"], request["keys"])
        say(event="committed", documents=removed, unchanged=0)
        return
    if request["op"] == "build":
        report = build_index(request["data"], request["folder"], replace=request.get("replace", False),
                             resolved=resolved, **options)
    else:
        report = add_documents(request["folder"], request["data"], encoder=resolved.encoder, **options)
    say(event="committed", documents=report.documents, unchanged=report.unchanged)


def main() -> None:
    precision = sys.argv[sys.argv.index("--precision") + 1] if "--precision" in sys.argv else "auto"
    resolved = resolve_recipe(threads=1, precision=precision)  # loads the model once, before any fork
    say(event="ready")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                child(request, resolved)
                code = 0
            except BaseException as error:  # report, never fall back into the server loop
                say(event="error", message=str(error))
                code = 1
            os._exit(code)
        say(event="start", pid=pid)
        _, status = os.waitpid(pid, 0)
        say(event="exit", status=status)


if __name__ == "__main__":
    main()

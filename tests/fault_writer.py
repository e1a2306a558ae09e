"""A fork server for the fault-injection tests: loads the real model once, then runs each write
(build, rebuild, add) in a forked child that the test SIGKILLs at a random moment.

Protocol, one JSON object per line: stdin {"op": "build"|"add", "folder", "data", "replace"}, and
optionally "checkpoint", "chunk" (entries per chunk, default 256) and "ray" (a Ray address);
stdout {"event": "start", "pid"}, then {"event": "progress", "done"} after each chunk the child wrote,
{"event": "committed", "generation"} from the child when its commit returned, then
{"event": "exit", "status"} once the child is gone.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indexer.ingest.build import add_documents, build_index  # noqa: E402
from indexer.embed.resolve import resolve_recipe  # noqa: E402


def say(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def child(request: dict, resolved) -> None:
    options = {"chunk_size": request.get("chunk", 256), "ray": request.get("ray"),
               "progress": (lambda done, total: say(event="progress", done=done)) if request.get("progress") else None}
    if "checkpoint" in request:
        options["checkpoint"] = request["checkpoint"]
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

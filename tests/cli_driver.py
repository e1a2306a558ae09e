"""A fork server for the CLI error table: imports `cli` (and torch) once, then runs each `bertdex ARGV`
in a forked child whose stdin, stdout and stderr are files, exactly as `python cli.py ARGV` would.

Protocol, one JSON object per line: stdin {"argv": [hex bytes, ...], "stdin": path|null, "out": path,
"err": path}; stdout {"status": exit status}. An uncaught exception prints its traceback to the
child's stderr, as the interpreter would.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402
import search.searcher  # noqa: E402, F401  (the heavy imports, done once before any fork)


def child(request: dict) -> int:
    stdin = os.open(request["stdin"] or os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, path in ((1, request["out"]), (2, request["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = ["cli.py", *(os.fsdecode(bytes.fromhex(arg)) for arg in request["argv"])]
    try:
        return cli.main()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Cold start: a new `bertdex` process answering from the shell, beside the bare imports it cannot do without.

    python bench/coldstart.py                       # the English example FAQ, 5 rounds
    python bench/coldstart.py --index runs/faq-ko --question "비밀번호가 생각이 안 나요" --rounds 7

Each round runs, in a fresh process each and in this order (so the machine's load falls on all alike):
`python -c "import onnxruntime, tokenizers, faiss, numpy"` (the floor: what a question needs at least),
`python cli.py query DIR QUESTION -k 1 --json`, `python cli.py info DIR --json`, and `python cli.py serve DIR`
up to its first answer to POST /search (from the start of the process, and from the "starting" line it prints).
The page cache is warm and the ONNX export and the path choice are cached: a first, untimed round makes sure.
Medians are printed with the ratios to the import floor of the same rounds, the CPU and the load average;
beside the wall time, the CPU seconds each process used (user + system), which a loaded machine moves less.
Targets (issue 23): query <= 2.5x the floor, info <= 1.5x, serve ready <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLOOR = "import onnxruntime, tokenizers, faiss, numpy"
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=ENV)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_to_first_answer(index: Path, question: str) -> tuple[float, float]:
    """(seconds from the process start to its first answer, seconds from its "starting" line to that answer)."""
    port = free_port()
    start = time.perf_counter()
    process = subprocess.Popen([PYTHON, "cli.py", "serve", str(index), "--port", str(port), "--no-access-log",
                                "--no-query-log"], cwd=ROOT, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        process.stderr.readline()  # the start line
        printed = time.perf_counter()
        body = json.dumps({"question": question, "k": 1}).encode()
        while True:
            if process.poll() is not None:
                raise SystemExit(f"serve exited: {process.stderr.read()}")
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/search", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as answer:
                    json.load(answer)
                done = time.perf_counter()
                return done - start, done - printed
            except OSError:
                time.sleep(0.01)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=ROOT / "runs" / "coldstart-faq-en")
    parser.add_argument("--question", default="how long does a refund take?")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (args.index / "bertdex.db").is_file():
        subprocess.run([PYTHON, "cli.py", "index", str(args.index), "examples/faq_en.csv", "--text-field", "question",
                        "--group-field", "group", "-q"], cwd=ROOT, check=True, env=ENV)
    commands = {
        "import floor": [PYTHON, "-c", FLOOR],
        "query": [PYTHON, "cli.py", "query", str(args.index), args.question, "-k", "1", "--json"],
        "info": [PYTHON, "cli.py", "info", str(args.index), "--json"],
    }
    for command in commands.values():  # warm the page cache, the export and the choice
        timed(command)
    serve_to_first_answer(args.index, args.question)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in [*commands, "serve start->answer", "serve line->answer"]}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            wall, seconds = timed(command)
            times[name].append(wall)
            cpu[name].append(seconds)
        whole, after_line = serve_to_first_answer(args.index, args.question)
        times["serve start->answer"].append(whole)
        times["serve line->answer"].append(after_line)
    load_after = os.getloadavg()
    floor = statistics.median(times["import floor"])
    cpu_floor = statistics.median(cpu["import floor"])
    print(f"$ python bench/coldstart.py --index {args.index} --rounds {args.rounds}")
    print(f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print(f"{'':22} {'median s':>9} {'min s':>7} {'x floor':>8} {'CPU s':>6} {'CPU x floor':>11}  target")
    targets = {"query": "<= 2.5x floor", "info": "<= 1.5x floor", "serve start->answer": "<= 3 s",
               "serve line->answer": "<= 1 s"}
    for name, values in times.items():
        middle = statistics.median(values)
        spent = f"{statistics.median(cpu[name]):6.2f} {statistics.median(cpu[name]) / cpu_floor:11.2f}" if name in cpu \
            else f"{'':6} {'':11}"
        print(f"{name:22} {middle:9.2f} {min(values):7.2f} {middle / floor:8.2f} {spent}  {targets.get(name, '')}")


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

if __name__ == "__main__":
    main()

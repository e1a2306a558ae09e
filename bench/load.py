"""Load on the HTTP service: N concurrent clients for T seconds on loopback, mostly searches, some writes.

Builds a fresh index of a public FAQ (default: bertfaq-covidfaq, question = title), starts
`bertdex serve` as a subprocess, and runs the clients as threads with their own keep-alive
connections. Reads ask the data set's real user questions; writes add one entry (or delete one the
same client added before). Prints requests/s, p50/p99 latency per kind, the error count, the
micro-batcher's passes, and checks afterwards, through the API and in the SQLite file, that the
index holds exactly the original entries plus the writes that were acknowledged.

    python bench/load.py --clients 8 --seconds 20            # micro-batching on (the default)
    python bench/load.py --clients 8 --seconds 20 --compare  # and again with --max-batch 1, same run
    python bench/load.py --clients 8 --seconds 20 --workers 1 2  # searches only, `serve --workers N` for each N
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from indexer.store.keywords import normalize_text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MAX_CLIENTS, MAX_SECONDS = 64, 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help=f"concurrent clients (1..{MAX_CLIENTS})")
    parser.add_argument("--seconds", type=float, default=20, help=f"how long the load runs (at most {MAX_SECONDS})")
    parser.add_argument("--write-share", type=float, default=0.05, help="share of requests that write (0..0.5)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--dataset", default="bertfaq-covidfaq", help="a folder of --data with beir/corpus.jsonl")
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument("--compare", action="store_true", help="run again with --max-batch 1 (no micro-batching)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the server (default: all)")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="server processes (`serve --workers N`) to compare, one run each; searches only (read-only)")
    args = parser.parse_args()
    if args.workers:
        args.write_share = 0.0
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.write_share <= 0.5:
        parser.error(f"--clients 1..{MAX_CLIENTS}, --seconds up to {MAX_SECONDS}, --write-share 0..0.5")
    beir = args.data / args.dataset / "beir"
    if not (beir / "corpus.jsonl").is_file():
        parser.error(f"{beir}/corpus.jsonl not found: give --data")
    questions = [json.loads(line)["text"] for line in open(beir / "queries.jsonl", encoding="utf-8") if line.strip()]
    print(f"$ python bench/load.py {' '.join(sys.argv[1:])}")
    print(f"data: {beir} ({len(questions)} questions); {os.cpu_count()} CPUs, shared with whatever else runs")
    with tempfile.TemporaryDirectory(prefix="bertdex-load-") as work:
        folder = Path(work) / "index"
        run([sys.executable, str(ROOT / "cli.py"), "index", str(folder), str(beir / "corpus.jsonl"),
             "--text-field", "title", "--id-field", "_id", "--quiet"])
        failed = 0
        for max_batch in ([64, 1] if args.compare else [64]):
            for workers in args.workers or [1]:
                fresh = Path(work) / f"run-{max_batch}-{workers}"  # each run starts from the same untouched index
                shutil.copytree(folder, fresh, ignore=shutil.ignore_patterns("write.lock"))
                failed += one_run(args, fresh, questions, max_batch, workers)
    return 1 if failed else 0


def one_run(args, folder: Path, questions: list[str], max_batch: int, workers: int = 1) -> int:
    key, port = secrets.token_urlsafe(24), free_port()
    command = [sys.executable, str(ROOT / "cli.py"), "serve", str(folder), "--port", str(port),
               "--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(max_batch), "--workers", str(workers),
               *(["--threads", str(args.threads)] if args.threads else [])]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "BERTDEX_API_KEY": key, "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(server, base)
        before = httpx.get(f"{base}/health").json()
        lone = lone_latencies(base, questions[:40])
        load = Load(base, key, questions, args.write_share)
        load.run(args.clients, args.seconds)
        info = httpx.get(f"{base}/info", timeout=30).json()["server"]["batching"]
        api_problems = load.check_through_api(before["documents"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    file_problems = check_files(folder, load.expected, load.gone)
    report(args, max_batch, lone, load, info, api_problems + file_problems, workers)
    return load.errors + len(api_problems) + len(file_problems)


class Load:
    """The clients: each keeps its latencies, and the keys it wrote and deleted (acknowledged only)."""

    def __init__(self, base: str, key: str, questions: list[str], write_share: float):
        self.base, self.key, self.questions, self.write_share = base, key, questions, write_share
        self.latencies: dict[str, list[float]] = {"search": [], "add": [], "delete": []}
        self.expected: dict[str, str] = {}  # key -> text, as the server acknowledged it
        self.gone: set[str] = set()
        self.errors, self.error_samples, self.seconds = 0, [], 0.0
        self.lock = threading.Lock()

    def run(self, clients: int, seconds: float) -> None:
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=self.client, args=(n, stop)) for n in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 300)
        self.seconds = time.perf_counter() - started

    def client(self, number: int, stop: float) -> None:
        chance, mine, count = random.Random(number), [], 0
        headers = {"X-API-Key": self.key}
        with httpx.Client(base_url=self.base, timeout=120) as http:
            while time.monotonic() < stop:
                count += 1
                if chance.random() >= self.write_share:
                    kind, call = "search", lambda: http.post("/search", json={"question": chance.choice(self.questions), "k": 5})
                elif mine and chance.random() < 0.25:
                    victim = mine.pop(chance.randrange(len(mine)))
                    kind, call = "delete", lambda: http.delete(f"/documents/{victim}", headers=headers)
                else:
                    new_key, text = f"load-{number}-{count}", chance.choice(self.questions)
                    body = {"documents": [{"key": new_key, "text": text, "fields": {"client": number}}]}
                    kind, call = "add", lambda: http.post("/documents", json=body, headers=headers)
                began = time.perf_counter()
                try:
                    response = call()
                    ok = response.status_code == 200
                    problem = f"{kind}: {response.status_code} {response.text[:200]}"
                except httpx.HTTPError as error:
                    ok, problem = False, f"{kind}: {type(error).__name__} {error}"
                elapsed = time.perf_counter() - began
                with self.lock:
                    self.latencies[kind].append(elapsed)
                    if not ok:
                        self.errors += 1
                        self.error_samples.append(problem)
                    elif kind == "add":
                        self.expected[new_key] = normalize_text(text)
                        mine.append(new_key)
                    elif kind == "delete":
                        del self.expected[victim]
                        self.gone.add(victim)

    def check_through_api(self, documents_before: int) -> list[str]:
        problems = []
        with httpx.Client(base_url=self.base, timeout=60) as http:
            health = http.get("/health").json()
            if health["documents"] != documents_before + len(self.expected):
                problems.append(f"/health counts {health['documents']} entries, expected {documents_before} + "
                                f"{len(self.expected)} written")
            for key, text in self.expected.items():
                got = http.get(f"/documents/{key}")
                if got.status_code != 200 or got.json()["text"] != text:
                    problems.append(f"written entry {key} is missing or changed ({got.status_code})")
            for key in self.gone:
                if http.get(f"/documents/{key}").status_code != 404:
                    problems.append(f"deleted entry {key} is still there")
        return problems


def check_files(folder: Path, expected: dict[str, str], gone: set[str]) -> list[str]:
    """After the server stopped: the SQLite keys are the written ones, and FAISS agrees with SQLite."""
    from indexer.store.folder import connect
    from indexer.store.verify import verify_index

    db = connect(folder, readonly=True)
    stored = {key for (key,) in db.execute("SELECT key FROM documents WHERE key LIKE 'load-%'")}
    db.close()
    problems = []
    if stored != set(expected):
        problems.append(f"the file holds {len(stored - set(expected))} unexpected and misses "
                        f"{len(set(expected) - stored)} written entries")
    if not verify_index(folder).ok:
        problems.append("bertdex verify fails after the load")
    return problems


def lone_latencies(base: str, questions: list[str]) -> list[float]:
    """One client, one question at a time: what the batching window costs a lone question."""
    times = []
    with httpx.Client(base_url=base, timeout=60) as http:
        for question in questions:
            began = time.perf_counter()
            http.post("/search", json={"question": question, "k": 5}).raise_for_status()
            times.append(time.perf_counter() - began)
    return times[5:]  # the first few warm up


def report(args, max_batch: int, lone: list[float], load: Load, info: dict, problems: list[str], workers: int = 1) -> None:
    total = sum(len(v) for v in load.latencies.values())
    label = "micro-batching on" if max_batch > 1 else "micro-batching off (--max-batch 1)"
    label += f", {workers} server process{'es' if workers > 1 else ''}"
    threads = args.threads or "all"
    print(f"\n== {label}: {args.clients} clients, {load.seconds:.1f} s, window {args.batch_window_ms} ms, "
          f"server torch threads {threads} ==")
    print(f"lone question (1 client, sequential): p50 {ms(lone, 50)} ms, p99 {ms(lone, 99)} ms")
    print(f"requests: {total} in {load.seconds:.1f} s = {total / load.seconds:.1f} req/s; errors: {load.errors}")
    for kind, times in load.latencies.items():
        if times:
            print(f"  {kind:<7} {len(times):>6}  p50 {ms(times, 50):>7} ms  p99 {ms(times, 99):>7} ms")
    average = info["questions"] / info["batches"] if info["batches"] else 0
    print(f"forward passes{' (one worker)' if workers > 1 else ''}: {info['batches']} for {info['requests']} search requests "
          f"({average:.2f} questions a pass, largest {info['largest']} requests)")
    print(f"written and kept: {len(load.expected)} entries, deleted: {len(load.gone)}; "
          f"index check: {'exactly the written entries' if not problems else 'FAILED'}")
    for line in load.error_samples[:5] + problems[:10]:
        print(f"  ! {line}")


def ms(times: list[float], percentile: int) -> str:
    if not times:
        return "-"
    ordered = sorted(times)
    return f"{1000 * ordered[min(len(ordered) - 1, int(len(ordered) * percentile / 100))]:.1f}"


def run(command: list[str]) -> None:
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(server: subprocess.Popen, base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"bertdex serve exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("bertdex serve did not answer in time")


if __name__ == "__main__":
    sys.exit(main())

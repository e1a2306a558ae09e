"""Embedding on Ray: a pool of actors, each holding one encoder, fed pieces of the writer's chunks.

The driver (the process that runs `bertdex index/add`) keeps the only writer. It loads the encoder
first, so an ONNX export is made once; the exported file goes to the actors through the object store
(an actor on the same machine finds it in the shared cache and never fetches it). Each actor makes
the same encoder as the driver (`encoder_for` with the driver's recipe, precision and backend) once
(an actor given GPUs, `gpus`, chooses its own path by measurement instead: CUDA where it is faster),
and embeds pieces of texts with `Encoder.embed`, which batches them under the usual token budget.
Vectors come back in the order the pieces went out. An actor that dies is restarted by Ray and its
pieces are run again (MAX_RESTARTS); past that the load stops with nothing after its last commit.

`ray` is imported only here, and only when a load asks for it.
"""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections import deque
from pathlib import Path

import numpy as np

from indexer.embed import onnx_model
from indexer.embed.adapted import is_adapted
from indexer.embed.encoder import Embedded, Encoder
from indexer.embed.recipe import Recipe
from indexer.embed.runners import NO_TORCH
from indexer.errors import BertdexError

PIECE = 256  # texts per actor call: small enough to spread one chunk over several actors
IN_FLIGHT = 3  # pieces queued per actor, so none waits for the driver
PROBE_SECONDS = 5  # a ray:// address that accepts no TCP connection in this time is unreachable
MAX_RESTARTS = 3  # per actor; each restart reloads the encoder and re-runs its unfinished pieces
THREADS = 1  # CPUs (and encoder threads) per actor: one actor per core scales best for small models
NAME = "bertdex-embed"  # actors are named NAME-<run>-<i>, so `ray list actors` and tests can find them


def _ray():
    try:
        import ray
    except ImportError:
        raise BertdexError("--ray needs the ray package: pip install 'bertdex[ray]'") from None
    return ray


def connect(address: str, root: Path) -> bool:
    """Join (or start, for "local") a Ray cluster; True when this call started it (and must stop it).

    A ray:// address is probed first (PROBE_SECONDS): Ray's own client waits ~40 s for an address where
    nothing listens, and says so in a warning of its own; here it is one line, at once.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    if address.startswith("ray://"):
        _probe(address)
    try:
        with warnings.catch_warnings():  # Ray's warnings would print above our one line
            warnings.simplefilter("ignore")
            _init(ray, address, root)
    except Exception as error:  # ConnectionError, RuntimeError, ValueError from a bad address
        raise BertdexError(f"--ray {address}: cannot reach a Ray cluster ({str(error).splitlines()[0][:160]})") from None
    return True


def _probe(address: str) -> None:
    """BertdexError unless something accepts a TCP connection at the ray://HOST:PORT address."""
    rest = address[len("ray://"):].rstrip("/")
    host, _, port = rest.rpartition(":") if rest.rfind(":") > rest.rfind("]") else (rest, "", "10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except ValueError:
        raise BertdexError(f"--ray {address}: give it as ray://HOST:PORT (the Ray client port, 10001 by default)") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BertdexError(f"--ray {address}: cannot reach a Ray cluster ({reason} within {PROBE_SECONDS} s)") from None


def _init(ray, address: str, root: Path) -> None:
    if address == "local":
        # the workers import this checkout of bertdex, whatever is installed on the machine
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", runtime_env={"env_vars": {"PYTHONPATH": str(root)}})
    else:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": str(root)}})


class EmbedWorker:
    """One actor: one encoder, loaded once (`ray.remote` is applied in RayEmbedder)."""

    def __init__(self, recipe: dict, precision: str, backend: str, onnx: tuple[list[str], list] | None, threads: int,
                 model: str | None = None, projection: list | None = None):
        import torch

        from indexer.embed.resolve import encoder_for

        torch.set_num_threads(threads)
        if onnx is not None:  # the driver's export: write it to this machine's cache unless it is there
            names, holder = onnx
            if onnx_model.find_cached(onnx_model.DEFAULT_CACHE / names[-1]) is None:
                import ray

                for name, data in zip(names, ray.get(holder[0])):  # its weights first, the graph last
                    _write_atomically(onnx_model.DEFAULT_CACHE / name, data)
        if projection is not None:  # the index's learned map: the actor never opened the index folder
            from indexer.embed.projection import remember_map

            remember_map(recipe["projection"], projection)
        # `model`: the folder of an adapted model (inside the index folder, which the actor never opened)
        self.encoder = encoder_for(Recipe.from_dict(recipe), model=model, precision=precision, backend=backend,
                                   threads=threads)

    def embed(self, texts: list[str], options: dict):
        embedded = self.encoder.embed(texts, **options)
        return embedded.vectors, embedded.owners, embedded.spans, embedded.truncated

    def pid(self) -> int:
        return os.getpid()


class RayEmbedder:
    """The embedder of indexer.ingest.bulk on a pool of Ray actors."""

    def __init__(self, encoder: Encoder, recipe: Recipe, options: dict, *, address: str = "local",
                 workers: int | None = None, gpus: float = 0):
        ray = _ray()
        self.options = options
        self.label = encoder.path.label()
        self.started = connect(address, Path(__file__).resolve().parents[2])
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            count = workers or max(1, cpus // THREADS)
            if gpus and ray.cluster_resources().get("GPU", 0) < gpus:
                raise BertdexError(f"--ray-gpus {gpus}: the Ray cluster has no GPU")
            onnx = None  # a local Ray's actors find the export in this machine's cache
            session = getattr(encoder.runner, "session", None)  # the ONNX Runtime runner's export
            if address != "local" and session is not None and Path(getattr(session, "path", "")).is_file():
                files = onnx_model.export_files(Path(session.path))
                onnx = ([f.name for f in files], [ray.put([f.read_bytes() for f in files])])
            worker = ray.remote(num_cpus=THREADS, num_gpus=gpus, max_restarts=MAX_RESTARTS,
                                max_task_retries=MAX_RESTARTS)(EmbedWorker)
            backend = encoder.backend if encoder.backend in NO_TORCH else "torch"
            run = uuid.uuid4().hex[:8]
            made = (recipe.to_dict(), encoder.precision, backend, onnx, THREADS)
            # a GPU actor measures its own machine's paths (CUDA ones among them), same tolerance; so does
            # each model of a pair (on this machine: the driver's saved choices, so the same paths)
            if gpus or recipe.companion is not None:
                made = (recipe.to_dict(), "auto", "auto", None, THREADS)
            if is_adapted(recipe.model) and recipe.companion is None:
                made = (*made, str(encoder.folder))
            projection = encoder.projection[2].tolist() if getattr(encoder, "projection", None) is not None else None
            self.actors = [worker.options(name=f"{NAME}-{run}-{i}").remote(*made, projection=projection)
                           for i in range(count)]
            self.load = [0] * count
        except BaseException:
            self.close()
            raise

    def stream(self, jobs):
        """(payload, Embedded) per job, in order; pieces of several jobs run at once on the actors."""
        pending: deque = deque()
        for payload, texts in jobs:
            pieces = [self._submit(texts[start:start + PIECE]) for start in range(0, len(texts), PIECE)]
            pending.append((payload, pieces))
            while sum(len(p) for _, p in pending) > IN_FLIGHT * len(self.actors):
                yield self._collect(*pending.popleft())
        while pending:
            yield self._collect(*pending.popleft())

    def _submit(self, texts: list[str]):
        actor = int(np.argmin(self.load))
        self.load[actor] += 1
        return actor, len(texts), self.actors[actor].embed.remote(texts, self.options)

    def _collect(self, payload, pieces):
        ray = _ray()
        parts = []
        for actor, _, ref in pieces:
            try:
                parts.append(ray.get(ref))
            except ray.exceptions.RayError as error:
                raise BertdexError(f"a Ray worker failed {MAX_RESTARTS + 1} times "
                                   f"({type(error).__name__}); nothing after the last commit was kept") from None
            self.load[actor] -= 1
        return payload, (_join(parts, [count for _, count, _ in pieces]) if parts else None)

    def close(self) -> None:
        ray = _ray()
        for actor in getattr(self, "actors", []):
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.started:
            ray.shutdown()
            self.started = False


def _join(parts: list, counts: list[int]) -> Embedded:
    """One Embedded from the pieces of a job: owners shifted to the job's text positions."""
    offsets = np.cumsum([0, *counts[:-1]])
    vectors = np.concatenate([p[0] for p in parts])
    owners = np.concatenate([p[1] + offset for p, offset in zip(parts, offsets)])
    spans = np.concatenate([np.asarray(p[2]).reshape(-1, 2) for p in parts])
    return Embedded(vectors, owners, spans, sum(int(p[3]) for p in parts))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)

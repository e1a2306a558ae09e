"""The machine a bench ran on: the CPU for the line each bench prints beside its figures, and the memory
readings (peak and largest RSS of this process) its memory figures come from."""

from __future__ import annotations

import platform
import threading
from contextlib import contextmanager


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC"), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _status(*names: str) -> dict[str, int]:
    """Fields of /proc/self/status in MiB (0 where there is none)."""
    found = dict.fromkeys(names, 0)
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                name = line.split(":")[0]
                if name in found:
                    found[name] = int(line.split()[1]) // 1024
    except OSError:
        pass
    return found


def peak_mb() -> int:
    """This process's peak RSS (VmHWM: mapped file pages count; unlike ru_maxrss, not inherited across exec)."""
    return _status("VmHWM")["VmHWM"]


def rss_kinds() -> dict[str, int]:
    """Anonymous RSS (the process's own memory) and file RSS (mapped pages: page cache, shared, reclaimable)."""
    found = _status("RssAnon", "RssFile")
    return {"anon_mb": found["RssAnon"], "file_mb": found["RssFile"]}


@contextmanager
def largest_rss(every: float = 0.2):
    """The largest anonymous and file RSS seen while the block runs, sampled every `every` s on a thread:
    {"anon_mb", "file_mb"}, complete when the block ends."""
    largest, done = {"anon_mb": 0, "file_mb": 0}, threading.Event()

    def sample() -> None:
        while not done.wait(every):
            for name, value in rss_kinds().items():
                largest[name] = max(largest[name], value)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        yield largest
    finally:
        done.set()
        watcher.join()

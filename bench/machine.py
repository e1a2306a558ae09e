"""The CPU a bench ran on, for the line each bench prints beside its figures."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC"), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()

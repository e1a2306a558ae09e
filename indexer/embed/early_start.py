"""Things made on a thread of their own before they are asked for: an ONNX Runtime session, an OpenVINO
compilation. Both runtimes do that work without holding the GIL, so it overlaps the caller's imports and
tokenizer loading (search.early starts them; the model classes take them).

    early = Early("bertdex-early-session")
    early.start(key, lambda: make(...))   # at most one a key
    made = early.take(key)                # waits; None when none was started or making it failed
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable


class _Making(threading.Thread):
    def __init__(self, make: Callable[[], object], name: str):
        super().__init__(name=name, daemon=True)
        self.make, self.made = make, None

    def run(self) -> None:
        try:
            self.made = self.make()
        except Exception:
            self.made = None  # whoever takes it makes its own, and reports what fails


class Early:
    """Objects being made on threads, by key; one never taken is dropped with the process."""

    def __init__(self, name: str):
        self.name = name
        self._making: dict[Hashable, _Making] = {}
        self._lock = threading.Lock()

    def start(self, key: Hashable, make: Callable[[], object]) -> None:
        with self._lock:
            if key in self._making:
                return
            self._making[key] = thread = _Making(make, self.name)
        thread.start()

    def take(self, key: Hashable):
        """What was made for `key` (waiting for it), else None; handed over once."""
        with self._lock:
            thread = self._making.pop(key, None)
        if thread is None:
            return None
        thread.join()
        return thread.made

    def pending(self) -> list[object]:
        """What is being made and not taken yet (waiting for each): for tests."""
        with self._lock:
            threads = list(self._making.values())
        for thread in threads:
            thread.join()
        return [thread.made for thread in threads]

    def __len__(self) -> int:
        with self._lock:
            return len(self._making)

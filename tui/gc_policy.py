"""The UI process's garbage-collector policy: no full collection while someone is using the app.

A full (generation 2) collection walks every tracked object and holds the GIL while it does: with the
app's ~150k long-lived objects (Textual's DOM and caches, imported modules) that was 90-130 ms idle and
340 ms during a 1000-stream sweep on a 2-core machine (tests/benchmarks/bench_tui_bench.py), i.e. a
frozen screen and a key that paints late.

So objects that have lived a couple of seconds are moved out of the collector's way (``gc.freeze``)
right after a young-generation pass has removed the cyclic garbage among them; the collector then only
ever walks objects younger than that, which costs a few milliseconds. Frozen objects are still freed by
reference counting. What freezing keeps is a reference cycle that becomes garbage after it was frozen
(a removed widget, say): that is reclaimed by a full collection over everything, run only once input
has been quiet for a while, and not more often than every few minutes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from textual.app import App

YOUNG_PASS_INTERVAL_S = 2.0
RECLAIM_AFTER_QUIET_S = 30.0
RECLAIM_MIN_INTERVAL_S = 300.0
# Automatic full collections only after this many middle-generation passes (Python's default: 10). With
# most objects frozen, the "25% new long-lived objects" rule alone would trigger one every few seconds.
FULL_COLLECTION_THRESHOLD = 100


def freeze_long_lived_objects() -> None:
    """Collect the cyclic garbage among young objects, then take every survivor out of future scans."""
    gc.collect(1)
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if gen2 < FULL_COLLECTION_THRESHOLD:
        gc.set_threshold(gen0, gen1, FULL_COLLECTION_THRESHOLD)


class GcPolicy:
    """Installed once by the app, started after the first frame; ``input_quiet_s`` says how long ago the
    user last pressed a key or used the mouse."""

    def __init__(
        self, input_quiet_s: Callable[[], float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._input_quiet_s = input_quiet_s
        self._clock = clock
        self._last_reclaim = self._clock()
        self.young_passes = 0
        self.reclaims = 0

    def start(self, app: App[Any]) -> None:
        freeze_long_lived_objects()
        app.set_interval(YOUNG_PASS_INTERVAL_S, self.tick, name="gc policy")

    def tick(self) -> None:
        now = self._clock()
        quiet = self._input_quiet_s() >= RECLAIM_AFTER_QUIET_S
        if quiet and now - self._last_reclaim >= RECLAIM_MIN_INTERVAL_S:
            self._last_reclaim = now
            self.reclaims += 1
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            return
        self.young_passes += 1
        freeze_long_lived_objects()

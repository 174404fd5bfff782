"""Progress for long work: a tqdm bar on a terminal, a log line at a steady pace elsewhere.

Under kfp.local, in a Kubernetes pod or in CI, stderr is not a terminal: a tqdm bar
there is either silent or carriage-return noise, and embedding 9,000 items or
extracting knowledge for 1,000 users looked like a hang. Off a terminal this logs, every
`interval` seconds, what is done, the rate and the time left:

    knowledge: 212/943 prompts (22%), 3.1 prompts/s, 3 min 56 s left

and one closing line with the total time.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INTERVAL_S = 30.0


def duration(seconds: float) -> str:
    """12 s, 3 min 56 s, 1 h 02 min: what a person reads in a log."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def plural(unit: str) -> str:
    """batch -> batches, prompt -> prompts: progress lines are read by people."""
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class Progress:
    """`update(n)` as work is done; use as a context manager so the last line is written.

    bar: a tqdm bar (default: when stderr is a terminal); without one, log lines every
    `interval` seconds. `clock` is injectable so tests need not sleep.
    """

    def __init__(self, total: int, desc: str, unit: str = "item", *, bar: bool | None = None,
                 initial: int = 0, interval: float | None = None,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.units = plural(unit)
        self.interval = INTERVAL_S if interval is None else interval
        self.log, self.clock = logger or log, clock
        self.done = self.initial = initial  # a resumed epoch starts part-way
        self.start = self.last = clock()
        show = sys.stderr.isatty() if bar is None else bar
        self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0)
                    if show else None)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = duration(left) if left != float("inf") else "unknown time"
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.units} ({pct:.0f}%), "
                f"{rate:.1f} {self.units}/s, {eta} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        elapsed = self.clock() - self.start
        if elapsed >= self.interval:  # short work says nothing extra
            self.log.info("%s: %s %s in %s", self.desc, f"{self.done - self.initial:,}", self.units,
                          duration(elapsed))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

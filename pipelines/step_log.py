"""What `make run` shows: one line as each pipeline step starts and ends, progress during
long ones, and every step's full log in a file of its own.

kfp.local writes everything to stdout: its own task banners, each task's outputs, and
every line the task's subprocess prints (about 1,500 lines for one run, 385 of them
executor JSON). While a pipeline runs, `StepLog` stands in for stdout and for the root
logger's handlers, and sorts what arrives:

  * into RUN/logs/<task>.log, the task's full log (RUN/logs/pipeline.log outside tasks);
  * onto the terminal: `HH:MM:SS  train-hllm ...` as a task starts, `... done in 6 min
    37 s` (or `cached`) as it ends, and at most one progress line per 30 s from inside a
    task (hllm.progress lines and training epochs);
  * on a failed task: its log's path and last lines.

`verbose=True` passes everything through to the terminal as well (`hllm pipeline run -v`).
"""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, TextIO

from hllm.progress import INTERVAL_S, duration

ANSI = re.compile(r"\x1b\[[0-9;]*m")
START = re.compile(r"Executing task '(?P<task>[^']+)'")
END = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
CACHED = re.compile(r"Task (?P<task>\S+) cache hit")
# hllm.progress lines ("embed items: 500/1,683 items (30%), ... left") and epoch summaries
PROGRESS = re.compile(r"(?P<line>[\w .\-/]+: [\d,]+/[\d,]+ \w+ \(\d+%\), .* left"
                      r"|epoch \d+: loss [\d.]+ .*)$")
TAIL_LINES = 20


class StepLog(io.TextIOBase):
    """A text stream (stands in for sys.stdout) that routes lines as the module says."""

    def __init__(self, logs: Path, terminal: TextIO, *, verbose: bool = False,
                 interval: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.logs, self.terminal, self.verbose = logs, terminal, verbose
        self.interval, self.clock = interval, clock
        logs.mkdir(parents=True, exist_ok=True)
        self.pipeline_file = open(logs / "pipeline.log", "a", encoding="utf-8")
        self.task: str | None = None
        self.file: TextIO = self.pipeline_file
        self.started = self.last_progress = 0.0
        self.recent: deque[str] = deque(maxlen=TAIL_LINES)
        self.failed: list[str] = []
        self.buffer = ""

    # ------------------------------------------------------------ stream
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if not self.closed:
            self.file.flush()
            self.terminal.flush()

    def close(self) -> None:
        if self.closed:
            return
        if self.buffer:
            self._line(self.buffer)
            self.buffer = ""
        self._end_task()
        super().close()  # flushes first, so the files close after it
        self.pipeline_file.close()

    # ------------------------------------------------------------ routing
    def _say(self, text: str) -> None:
        self.terminal.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
        self.terminal.flush()

    def _line(self, raw: str) -> None:
        line = ANSI.sub("", raw).rstrip()
        if self.verbose:
            self.terminal.write(raw + "\n")
        if match := START.search(line):
            self._end_task()
            self.task = match["task"]
            self.file = open(self.logs / f"{self.task}.log", "w", encoding="utf-8")
            self.started, self.last_progress = self.clock(), float("-inf")  # the first shows
            self.recent.clear()
            if not self.verbose:
                self._say(f"{self.task} ...")
        self.file.write(line + "\n")
        self.recent.append(line.strip())
        if match := END.search(line):
            self._finish(match["task"], match["status"])
        elif match := CACHED.search(line):
            if not self.verbose:
                self._say(f"{match['task']} cached")
        elif self.task and not self.verbose and (match := PROGRESS.search(line)):
            now = self.clock()
            if now - self.last_progress >= self.interval:
                self.last_progress = now
                self._say(f"{self.task}  {match['line'].strip()}")

    def _finish(self, task: str, status: str) -> None:
        seconds = self.clock() - self.started
        log_path = self.logs / f"{task}.log"
        if status == "SUCCESS":
            if not self.verbose:
                self._say(f"{task} done in {duration(seconds)}")
        else:
            self.failed.append(task)
            tail = "\n".join(f"    {line}" for line in self.recent if line)
            self._say(f"{task} FAILED after {duration(seconds)}; full log: {log_path}\n"
                      f"  last lines:\n{tail}")
        self._end_task()

    def _end_task(self) -> None:
        if self.task is not None:
            self.file.close()
            self.file, self.task = self.pipeline_file, None


class routed:
    """Context manager: sys.stdout and the root logger's handlers go to a StepLog."""

    def __init__(self, logs: Path, *, verbose: bool = False):
        self.logs, self.verbose = logs, verbose

    def __enter__(self) -> StepLog:
        self.stdout = sys.stdout
        self.step_log = StepLog(self.logs, self.stdout, verbose=self.verbose)
        root = logging.getLogger()
        self.handlers, self.level = root.handlers[:], root.level
        handler = logging.StreamHandler(self.step_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        sys.stdout = self.step_log
        return self.step_log

    def __exit__(self, *exc) -> None:
        sys.stdout = self.stdout
        root = logging.getLogger()
        root.handlers, root.level = self.handlers, self.level
        self.step_log.close()

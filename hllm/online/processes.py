"""`hllm serve --processes N`: N server processes on one listening socket.

Why: one Python process answers with one core at a time (the GIL); the HTTP stack, the
online-store read and the model's Python code all take it in turn. N processes, each with
its own models, exposure-log writer and scoring threads, accept from one socket the
parent opened, so the kernel hands each new connection to whichever process accepts
first. In a cluster the same choice is replicas; processes are for one pod on several
cores, and for the 2-core machine the load bench runs on.

What a single process did alone, the processes now agree on through shared memory:
- readiness is true only once every process has loaded its arms;
- POST /v1/admin/refresh (answered by one process) raises a shared generation that every
  process's watcher thread acts on, one process after another, and returns once all of
  them have refreshed, so no process answers from the old version after the call returns;
- SIGTERM to the parent reaches every process; each finishes its requests in flight and
  writes its exposure-log records (its own partition files) before it exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hllm.errors import ConfigError

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.05  # how often a process looks for a refresh another one asked for
TURN_SECONDS = 120.0  # the longest a process waits for the ones before it to refresh


@dataclass
class Siblings:
    """The state the server processes share; `index` is this process's slot."""

    generation: Any  # multiprocessing.Value('l'): refreshes asked for so far
    done: Any  # multiprocessing.Array('l', N): the generation each process has refreshed to
    loaded: Any  # multiprocessing.Array('b', N): whether each process has its arms loaded
    index: int = 0
    # This process's outcome per generation: the refresh's change lines, or its error.
    results: dict[int, list[str] | Exception] = field(default_factory=dict)

    @classmethod
    def create(cls, processes: int, context) -> "Siblings":
        return cls(context.Value("l", 0), context.Array("l", processes),
                   context.Array("b", processes))

    def at(self, index: int) -> "Siblings":
        return Siblings(self.generation, self.done, self.loaded, index)

    @property
    def count(self) -> int:
        return len(self.done)

    def all_loaded(self) -> bool:
        return all(self.loaded[:])

    def ask_refresh(self) -> int:
        """A new generation every process will refresh to; returns it."""
        with self.generation.get_lock():
            self.generation.value += 1
            return self.generation.value

    def refreshed(self, generation: int) -> bool:
        return min(self.done[:]) >= generation

    def watch(self, refresh: Callable[[], Any], stop: threading.Event,
              turn_seconds: float = TURN_SECONDS) -> threading.Thread:
        """Refresh this process whenever another one raised the generation.

        One process at a time, in index order (each waits for the ones before it, at most
        `turn_seconds`): loading a version takes the CPU for seconds, and processes loading
        at once would leave no core for the requests that all of them go on answering.
        """
        def loop() -> None:
            seen = self.generation.value
            self.done[self.index] = seen
            while not stop.wait(WATCH_SECONDS):
                wanted = self.generation.value
                if wanted == seen:
                    continue
                turn = time.monotonic() + turn_seconds
                while (min(self.done[:self.index], default=wanted) < wanted
                       and time.monotonic() < turn and not stop.wait(WATCH_SECONDS)):
                    pass
                try:
                    self.results[wanted] = refresh()
                except Exception as exc:  # noqa: BLE001 - keeps serving what it has
                    self.results[wanted] = exc
                    log.error("refresh %d failed in process %d, still serving the loaded "
                              "versions: %s", wanted, self.index, str(exc).splitlines()[0][:300])
                seen = wanted
                self.done[self.index] = wanted

        thread = threading.Thread(target=loop, name="refresh-watch", daemon=True)
        thread.start()
        return thread


def listening_socket(host: str, port: int) -> socket.socket:
    """The socket every process accepts from (opened once, here, before they start)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it (Linux). Without it a response's header and body
    # writes meet the client's delayed ACK: ~50 ms per request (measured), not ~10.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another "
                          "--port or stop what holds it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def supervise(target: Callable[..., int], args: tuple, processes: int,
              host: str, port: int) -> int:
    """Start `processes` copies of target(*args, sock, siblings); stop them all on SIGTERM.

    One process exiting on its own (a crash, a model that failed to load) stops the others:
    a half-sized server that still looks healthy is worse than a restart by the cluster.
    Returns the first non-zero exit code, or 0.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    sock = listening_socket(host, port)
    siblings = Siblings.create(processes, context)
    children = [context.Process(target=target, args=(*args, sock, siblings.at(i)),
                                name=f"hllm-serve-{i}") for i in range(processes)]
    stopping: list[int] = []

    def stop(number: int, _frame) -> None:
        stopping.append(number)
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each drains its requests and its log

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            child.start()
        sock.close()  # the children hold it now
        while any(c.is_alive() for c in children):
            exited = [c for c in children if c.exitcode is not None]
            if exited and not stopping:
                log.error("server process %s exited (code %s); stopping the others",
                          exited[0].name, exited[0].exitcode)
                stop(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            child.join()
    codes = [c.exitcode for c in children]
    log.info("stopped %d server processes (exit codes %s)", processes, codes)
    return next((abs(c) for c in codes if c), 0)

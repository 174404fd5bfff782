"""What `hllm serve --processes N` shares between its processes, without a server.

The processes themselves run over HTTP in tests/test_online.py; here the shared state's
rules: a refresh asked by one process is done by every one, a failed refresh is reported
to whoever asked, and a port that is taken is one line before anything loads.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time

import pytest

from hllm.errors import ConfigError
from hllm.online.processes import Siblings, listening_socket
from hllm.online.server import check_port

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_refresh_asked_once_is_done_by_every_process():
    shared = Siblings.create(2, multiprocessing.get_context("spawn"))
    stop = threading.Event()
    calls = {0: 0, 1: 0}

    def refresher(index: int):
        def refresh() -> list[str]:
            calls[index] += 1
            return [f"refreshed by {index}"]
        return refresh

    first, second = shared.at(0), shared.at(1)
    first.watch(refresher(0), stop)
    second.watch(refresher(1), stop)
    try:
        assert wait_for(lambda: shared.refreshed(0))
        generation = first.ask_refresh()
        assert generation == 1
        assert wait_for(lambda: shared.refreshed(generation))
        assert calls == {0: 1, 1: 1}
        # each process keeps its own outcome: the one asked answers with its own lines
        assert first.results[1] == ["refreshed by 0"] and second.results[1] == ["refreshed by 1"]
        time.sleep(0.2)
        assert calls == {0: 1, 1: 1}  # nothing more until someone asks again
    finally:
        stop.set()


def test_processes_refresh_one_after_another():
    shared = Siblings.create(3, multiprocessing.get_context("spawn"))
    stop = threading.Event()
    spans: dict[int, tuple[float, float]] = {}

    def refresher(index: int):
        def refresh() -> list[str]:
            start = time.monotonic()
            time.sleep(0.2)  # a load that takes a while
            spans[index] = (start, time.monotonic())
            return []
        return refresh

    for index in (2, 0, 1):  # started out of order on purpose
        shared.at(index).watch(refresher(index), stop)
    try:
        assert wait_for(lambda: shared.refreshed(0))
        generation = shared.ask_refresh()
        assert wait_for(lambda: shared.refreshed(generation))
        assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0], spans
    finally:
        stop.set()


def test_a_failed_refresh_is_kept_for_the_process_that_asked():
    shared = Siblings.create(1, multiprocessing.get_context("spawn"))
    stop = threading.Event()

    def refresh() -> list[str]:
        raise ConfigError("registered model 'm' has no alias 'challenger'")

    shared.watch(refresh, stop)
    try:
        generation = shared.ask_refresh()
        assert wait_for(lambda: shared.refreshed(generation))
        assert isinstance(shared.results[generation], ConfigError)
    finally:
        stop.set()


def test_readiness_needs_every_process_loaded():
    shared = Siblings.create(2, multiprocessing.get_context("spawn"))
    shared.loaded[0] = 1
    assert not shared.all_loaded()
    shared.loaded[1] = 1
    assert shared.all_loaded()


def test_a_taken_port_is_one_line_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for check in (check_port, listening_socket):
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
                check("127.0.0.1", port)


def test_the_shared_socket_does_not_delay_small_writes():
    sock = listening_socket("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()

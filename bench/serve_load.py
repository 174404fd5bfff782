"""`hllm serve` under load: requests/s and p50/p99 at 1, 8 and 32 clients, then a hot swap.

    python bench/serve_load.py --data ../shared/data/ml-100k \\
        --control runs/latest/train_sasrec --treatment runs/latest/train_hllm

The two runs (by default those `make run` leaves) are registered in a private registry on
127.0.0.1 as versions 1 (champion: control) and 2 (challenger: treatment), the treatment
run once more as version 3 (the swap target, never loaded before the swap); histories come
from a Feast online store built from --data, as in production. Each client is a closed
loop over one keep-alive connection: send a recommendation request (one random ml-100k
user, k=10), wait for the answer, send the next. Phases of --seconds each: 1, 8, 32
clients, then 8 clients with `challenger` moved to version 3 and POST /v1/admin/refresh
halfway. The load itself lasts at most 60 s and stops by itself; only 127.0.0.1 is used.

Latency is measured at the client (HTTP included). The clients and the server share the
machine's cores, so on 2 cores the figures include the load generator's own CPU time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from serving_setup import Served, add_run_arguments, check_runs, register, served_experiment

MAX_LOAD_S = 60


def client_loop(served: Served, users: list[str], stop: threading.Event, seed: int,
                out: list[tuple[float, float, int, str, str]]) -> None:
    """(start, latency ms, status, served arm, version) per request until `stop`."""
    rng = random.Random(seed)
    host, port = served.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    path = f"/v2/models/{served.model}/infer"
    while not stop.is_set():
        user = rng.choice(users)
        body = json.dumps({"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES",
                                       "data": [user]}], "parameters": {"k": 10}})
        start = time.perf_counter()
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            status, data = 0, b"{}"
        latency = (time.perf_counter() - start) * 1000
        arm = version = ""
        if status == 200:
            outputs = {o["name"]: o["data"] for o in json.loads(data)["outputs"]}
            arm, version = outputs["served"][0], outputs["model_version"][0]
        out.append((start, latency, status, arm, version))
    conn.close()


def phase(served: Served, users: list[str], clients: int, seconds: float,
          during=None) -> tuple[list[tuple[float, float, int, str, str]], float]:
    """Every request's (start, latency ms, status, arm, version), and the seconds the
    phase lasted (longer than `seconds` by what `during` takes: it runs in the middle)."""
    stop = threading.Event()
    started = time.perf_counter()
    results: list[list] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=client_loop, args=(served, users, stop, i, results[i]))
               for i in range(clients)]
    for t in threads:
        t.start()
    if during is not None:
        time.sleep(seconds / 2)
        during()
        time.sleep(seconds / 2)
    else:
        time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return [r for rs in results for r in rs], time.perf_counter() - started


def row(name: str, clients: int, results: list, seconds: float) -> str:
    ok = [r[1] for r in results if r[2] == 200]
    errors = sum(1 for r in results if r[2] != 200)
    p50, p99 = (np.percentile(ok, 50), np.percentile(ok, 99)) if ok else (float("nan"),) * 2
    return (f"| {name} | {clients} | {len(results):,} | {len(results) / seconds:.0f} | "
            f"{p50:.1f} | {p99:.1f} | {errors} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--seconds", type=float, default=12.0, help="per phase (4 phases)")
    parser.add_argument("--workers", type=int, default=2, help="the server's scoring threads")
    parser.add_argument("--processes", type=int, default=1, help="the server's processes")
    parser.add_argument("--kserve-route", action="store_true",
                        help="serve through KServe's generic inference route (to compare)")
    args = parser.parse_args()
    if 4 * args.seconds + 2 > MAX_LOAD_S:
        parser.error(f"--seconds {args.seconds:g}: the load must stay under {MAX_LOAD_S} s")
    check_runs(parser, args, "metrics.json")
    from hllm.features import build_features
    from hllm.serving import OnlineHistory

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        build_features(args.data, tmp / "features")
        users = [u for u in map(str, range(1, 944)) if OnlineHistory(tmp / "features")(u)]
        print(f"features built ({time.perf_counter() - started:.0f} s); {len(users)} users "
              "with a history", flush=True)
        with served_experiment(tmp, [args.control, args.treatment],
                               ("--feature-repo", str(tmp / "features")),
                               workers=args.workers,
                               serve_args=["--processes", str(args.processes),
                                           *(["--kserve-route"] if args.kserve_route else [])]
                               ) as served:
            register(served.env, [args.treatment])  # version 3, for the swap
            served.set_alias("challenger", "2")
            phase(served, users, 4, 2.0)  # warm-up: not reported
            rows, answered = [], 0
            for clients in (1, 8, 32):
                results, lasted = phase(served, users, clients, args.seconds)
                answered += sum(r[2] == 200 for r in results)
                rows.append(row("steady", clients, results, lasted))
            swap: dict[str, float] = {}

            def move_challenger() -> None:
                swap["asked"] = time.perf_counter()
                served.set_alias("challenger", "3")
                served.post("/v1/admin/refresh")
                swap["done"] = time.perf_counter()

            results, lasted = phase(served, users, 8, args.seconds, during=move_challenger)
            answered += sum(r[2] == 200 for r in results)
            rows.append(row("hot swap", 8, results, lasted))
            treated = sorted((r[0], r[4]) for r in results if r[3] == "treatment")
            first_new = next((t for t, v in treated if v == "3"), None)
            old_after = sum(1 for t, v in treated if v == "2" and first_new and t > swap["done"])
            status = served.stop()
        records = sum(1 for p in served.exposure_log.rglob("*.jsonl")
                      for line in p.read_text().splitlines() if '"kind":"exposure"' in line)
        print()
        print("| phase | clients | requests | requests/s | p50 ms | p99 ms | errors |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print()
        print(f"swap: challenger moved to version 3 and refreshed in "
              f"{swap['done'] - swap['asked']:.1f} s under load; treatment answers from version 2 "
              f"after the refresh returned: {old_after}; first version-3 answer "
              f"{(first_new - swap['asked']) if first_new else float('nan'):.1f} s after the move")
        print(f"server exit code {status}; exposure log: {records:,} exposures for the "
              f"{answered + 0:,} answered measured requests (plus the warm-up's)")


if __name__ == "__main__":
    main()

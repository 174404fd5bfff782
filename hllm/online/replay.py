"""Replay held-back interactions through a running `hllm serve`, so a readout has real numbers.

Two steps, because the server must not know what the replay will ask about:

    hllm ab holdback --data ../shared/data/ml-100k --out runs/replay
        each user's newest interaction (ordered as hllm.data.split orders them, so it is the
        offline test target) goes to runs/replay/traffic.csv; everything before it to
        runs/replay/history/, which `hllm features build` turns into the online store the
        server reads. The server then sees exactly the history offline evaluation sees.

    hllm ab replay --url http://127.0.0.1:8080 --traffic runs/replay/traffic.csv --model hllm
        one recommendation request per traffic row, in time order, from --clients threads;
        after each answer, feedback: the row's item is "clicked" when the server showed it
        (a user clicks what is on the screen), else nothing is. hit@k in the readout is then
        the offline hit rate of each arm, measured through the serving path.

Replay writes into the server's exposure log, so it refuses a server beyond this machine
unless told otherwise: synthetic traffic must not land in a live experiment by mistake.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hllm.atomic import swap_dir
from hllm.errors import ConfigError, DataError
from hllm.progress import Progress

TRAFFIC_COLUMNS = ("user_id", "item_id", "timestamp")


def hold_back(data: str, out: str | Path) -> dict[str, int]:
    """Split `data` into history (out/history/) and each user's newest interaction (traffic)."""
    from hllm.data.readers import read_dataset
    from hllm.data.split import time_ordered

    out = Path(out)
    raw = read_dataset(data)
    ordered = time_ordered(raw.interactions)
    last = ~ordered["user_id"].duplicated(keep="last")
    history, traffic = ordered[~last], ordered[last]
    alone = sorted(set(traffic["user_id"]) - set(history["user_id"]))
    if alone:
        raise DataError(f"{raw.files.get('interactions', data)}: {len(alone)} user(s) have one "
                        f"interaction only (first: {alone[0]!r}); nothing is left as history")
    staged = out.with_name(f".{out.name}.staged")
    if staged.exists():
        shutil.rmtree(staged)
    (staged / "history").mkdir(parents=True)
    history.to_parquet(staged / "history" / "interactions.parquet", index=False)
    raw.items.to_parquet(staged / "history" / "items.parquet", index=False)
    traffic.sort_values("timestamp", kind="stable")[list(TRAFFIC_COLUMNS)].to_csv(
        staged / "traffic.csv", index=False)
    swap_dir(staged, out)
    return {"history": len(history), "traffic": len(traffic), "users": len(traffic)}


def read_traffic(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such traffic file (write it with `hllm ab holdback`)")
    frame = pd.read_csv(path, dtype=str)
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                        f"{', '.join(TRAFFIC_COLUMNS)}")
    empty = frame[["user_id", "item_id"]].isna().any(axis=1).to_numpy().nonzero()[0]
    if len(empty):
        raise DataError(f"{path}: row {empty[0] + 1} has an empty user_id or item_id")
    return frame


def check_local(url: str) -> None:
    """Refuse a server that is not on this machine (see the module docstring)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ConfigError(f"--url {url}: cannot resolve {host!r} ({exc.strerror})") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ConfigError(f"--url {url}: {host} is not this machine; replay writes synthetic "
                          "traffic into that server's exposure log. Pass --allow-remote if "
                          "that is what you want")


@dataclass
class ReplayResult:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    shown: int = 0  # requests whose answer contained the row's item
    arms: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few, for the operator

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {"requests": self.requests, "statuses": dict(self.statuses),
                "arms": dict(self.arms), "shown": self.shown, "seconds": round(self.seconds, 1),
                "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else None,
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1), "first_errors": self.errors}


def _post(url: str, payload: dict, timeout: float) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def replay(url: str, traffic: str | Path, model: str, clients: int = 4, k: int = 10,
           limit: int | None = None, allow_remote: bool = False,
           timeout: float = 30.0) -> ReplayResult:
    """Send every traffic row as a request, then its feedback; returns what came back."""
    if not allow_remote:
        check_local(url)
    rows = read_traffic(traffic)
    if limit is not None:
        rows = rows.head(limit)
    base = url.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/v2/health/ready", timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"{base}: not ready (HTTP {exc.code}); wait for the arms to load") from None
    except OSError as exc:
        raise ConfigError(f"{base}: no server answers ({exc}); start `hllm serve` first") from None
    result = ReplayResult()

    def one(row: tuple[str, str]) -> None:
        user, item = row
        started = time.perf_counter()
        status, answer = _post(f"{base}/v2/models/{model}/infer", {
            "inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": [user]}],
            "parameters": {"k": k}}, timeout)
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        result.statuses[status] += 1
        if status != 200:
            if len(result.errors) < 5:
                result.errors.append(f"user {user}: HTTP {status} {answer.get('error', '')}".strip())
            return
        outputs = {o["name"]: o["data"] for o in answer.get("outputs", [])}
        shown = item in outputs.get("item_ids", [])
        result.shown += shown
        result.arms[(outputs.get("arm") or ["?"])[0]] += 1
        status, answer = _post(f"{base}/v1/feedback", {
            "request_id": answer["id"], "user": user, "clicked": [item] if shown else []}, timeout)
        if status != 200:
            result.statuses[f"feedback {status}"] += 1

    started = time.perf_counter()
    with Progress(len(rows), "replay", "request") as progress, \
            ThreadPoolExecutor(max_workers=clients) as pool:
        for _ in pool.map(one, zip(rows["user_id"], rows["item_id"])):
            result.requests += 1
            progress.update()
    result.seconds = time.perf_counter() - started
    return result

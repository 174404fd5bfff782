"""The inference endpoints `hllm serve` registers: KServe models speaking the Open Inference Protocol.

    POST /v2/models/<model>/infer   (<model> is the A/B config's registered model name)

Ranking (HLLM, SASRec): input `user_id` (BYTES, shape [n]); parameter `k` (default 10).
Outputs per user: `item_ids` and `scores` ([n, k]), `arm` (the experiment arm),
`served` (whose model answered: holdout users are served control) and `model_version`.
The response's `id` is the request id feedback refers to.

CTR (LLM4MSR): inputs `user_id`, `item_id`, `scenario` (BYTES, shape [n]); output
`probability` (FP32 [n]), each row scored by its user's arm, plus `arm` and `model_version`.

Every answered request is in the exposure log before its answer leaves (hllm.online.exposure),
with the server-side latency and the ramp stage it was served under; a request an arm's model
fails to answer is logged as an `error` record for that arm. `hllm ab readout` reads both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pandas as pd
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from hllm.assignment import Assignment, assign
from hllm.online.arms import ArmModels
from hllm.online.batching import MicroBatcher
from hllm.online.exposure import ExposureLog

DEFAULT_K = 10
MAX_K = 1000


class RequestError(Exception):
    """A request the server cannot answer: sent back as {"error": message} with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def strings(request: InferRequest, name: str) -> list[str]:
    """A BYTES input as a list of str, or InvalidInput naming what is wrong."""
    for tensor in request.inputs:
        if tensor.name == name:
            if tensor.datatype != "BYTES":
                raise InvalidInput(f"input {name!r}: datatype {tensor.datatype}, expected BYTES")
            data = tensor.data if tensor.data is not None else []
            values = [v.decode() if isinstance(v, bytes) else str(v) for v in list(np.ravel(data))]
            if not values:
                raise InvalidInput(f"input {name!r} is empty")
            return values
    raise InvalidInput(f"request has no input {name!r} (inputs: "
                       f"{', '.join(t.name for t in request.inputs) or 'none'})")


def int_parameter(request: InferRequest, name: str, default: int, lo: int, hi: int) -> int:
    value = (request.parameters or {}).get(name, default)
    value = getattr(value, "int64_param", value)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"parameter {name!r}: {value!r} is not an integer") from None
    if not lo <= number <= hi:
        raise InvalidInput(f"parameter {name!r}: {number} is outside [{lo}, {hi}]")
    return number


class ArmEndpoint(Model):
    """What both endpoints share: arms, routing, the worker pool and the exposure log.

    A task names its endpoint (hllm.tasks.Task.endpoint); `hllm serve` builds it.
    """

    needs_history = False  # True: built with `history`, an online source of user histories

    def __init__(self, name: str, arms: ArmModels, log: ExposureLog, workers: int = 2,
                 ramp_percent: float | None = None) -> None:
        super().__init__(name)
        self.arms = arms
        self.exposures = log
        self.ramp_percent = ramp_percent
        # Scoring runs here, off the event loop: torch releases the GIL, so two workers
        # use two cores while the loop keeps accepting requests.
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-score")
        self.ready = False

    def load(self) -> bool:
        self.arms.refresh()
        self.ready = self.arms.ready
        return self.ready

    def route(self, user: str) -> Assignment:
        return assign(self.arms.cfg, user, self.ramp_percent)

    def record(self, kind: str, request_id: str, user: str, assignment: Assignment,
               model, started: float, **fields: Any) -> dict[str, Any]:
        """One log record: who was routed where, by which model, how long it took."""
        return {"kind": kind, "request_id": request_id, "time": now(), "user": user,
                "arm": assignment.arm, "served": assignment.serve,
                "in_ramp": assignment.in_ramp, "ramp": self.ramp_percent,
                "model": model.name, "version": model.version,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3), **fields}

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    def stop(self) -> None:
        self.pool.shutdown(wait=True)

    def _check_ready(self) -> dict:
        snapshot = self.arms.current()
        if not self.ready or not snapshot:
            raise ModelNotReady(self.name, "the arms' models are still loading")
        return snapshot


class RecommendEndpoint(ArmEndpoint):
    """Top-k items per user from the arm's ranking model and the user's online history.

    Histories are read on the event loop: a local online-store read (0.1 ms on SQLite)
    costs less than handing it to a thread and back under load. Scoring goes through a
    MicroBatcher, so concurrent requests for one model version share one model call.
    """

    needs_history = True  # built with `history`: a user id -> the user's recent item ids

    def __init__(self, name: str, arms: ArmModels, log: ExposureLog,
                 history: Callable[[str], list[str]], workers: int = 2, **kwargs: Any) -> None:
        super().__init__(name, arms, log, workers=workers, **kwargs)
        self.history = history  # called on the event loop only: one connection is enough
        self.batcher = MicroBatcher(workers=workers, name=f"{name}-score")

    def stop(self) -> None:
        super().stop()
        self.batcher.stop()

    async def predict(self, payload: InferRequest, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("use the Open Inference Protocol: POST /v2/models/"
                               f"{self.name}/infer with a BYTES input 'user_id'")
        users = strings(payload, "user_id")
        k = int_parameter(payload, "k", DEFAULT_K, 1, MAX_K)
        started = time.perf_counter()
        snapshot = self._check_ready()
        request_id = payload.id or str(uuid.uuid4())
        histories = [self._history(u) for u in users]
        routes = [self.route(u) for u in users]
        futures = [self.batcher.submit(snapshot[a.serve], h, k) for a, h in zip(routes, histories)]
        answers = []
        for user, route, history, future in zip(users, routes, histories, futures):
            model = snapshot[route.serve]
            try:
                items, scores = await asyncio.wrap_future(future)
                if not items:
                    raise RequestError(422, f"user {user!r}: none of the {len(history)} history "
                                            f"items is known to {model.name} version "
                                            f"{model.version}")
            except Exception as exc:
                status = exc.status if isinstance(exc, RequestError) else 500
                message = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                self.exposures.append(self.record("error", request_id, user, route, model,
                                                  started, status=status, error=message))
                raise
            answers.append((route, model, items, scores))
        for user, (assignment, model, items, scores) in zip(users, answers):
            self.exposures.append(self.record("exposure", request_id, user, assignment, model,
                                              started, items=items, scores=scores))
        width = max(len(a[2]) for a in answers)
        pad = lambda xs, fill: xs + [fill] * (width - len(xs))  # noqa: E731
        versions = sorted({a[1].version for a in answers})
        outputs = [
            InferOutput("item_ids", [len(users), width], "BYTES",
                        [i for a in answers for i in pad(a[2], "")]),
            InferOutput("scores", [len(users), width], "FP32",
                        [s for a in answers for s in pad(a[3], float("nan"))]),
            InferOutput("arm", [len(users)], "BYTES", [a[0].arm for a in answers]),
            InferOutput("served", [len(users)], "BYTES", [a[0].serve for a in answers]),
            InferOutput("model_version", [len(users)], "BYTES", [a[1].version for a in answers]),
        ]
        return InferResponse(request_id, self.name, outputs,
                             model_version=versions[0] if len(versions) == 1 else None)

    def _history(self, user: str) -> list[str]:
        history = self.history(user)
        if not history:  # the user's data, not the arm's model: not an arm error
            raise RequestError(404, f"user {user!r} has no history in the online store; "
                                    "nothing to personalise from")
        return history


class ScoreEndpoint(ArmEndpoint):
    """Click probabilities for (user, item, scenario) rows from each user's arm (LLM4MSR)."""

    async def predict(self, payload: InferRequest, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("use the Open Inference Protocol: POST /v2/models/"
                               f"{self.name}/infer with BYTES inputs user_id, item_id, scenario")
        cols = {c: strings(payload, c) for c in ("user_id", "item_id", "scenario")}
        if len({len(v) for v in cols.values()}) != 1:
            raise InvalidInput("inputs user_id, item_id and scenario need one value per row "
                               f"(got {', '.join(f'{c} {len(v)}' for c, v in cols.items())})")
        started = time.perf_counter()
        snapshot = self._check_ready()
        request_id = payload.id or str(uuid.uuid4())
        frame = pd.DataFrame(cols)
        routes = [self.route(u) for u in frame["user_id"]]
        probabilities = np.zeros(len(frame), dtype=np.float32)

        def score() -> None:
            for arm in {r.serve for r in routes}:
                rows = [i for i, r in enumerate(routes) if r.serve == arm]
                out = snapshot[arm].predictor.predict(None, frame.iloc[rows].reset_index(drop=True))
                probabilities[rows] = out["probability"].to_numpy(dtype=np.float32)

        await self.run(score)
        for user in dict.fromkeys(frame["user_id"]):
            rows = [i for i, u in enumerate(frame["user_id"]) if u == user]
            route = routes[rows[0]]
            self.exposures.append(self.record(
                "exposure", request_id, user, route, snapshot[route.serve], started,
                items=frame["item_id"].iloc[rows].tolist(),
                scenarios=frame["scenario"].iloc[rows].tolist(),
                scores=probabilities[rows].tolist()))
        outputs = [InferOutput("probability", [len(frame)], "FP32", probabilities.tolist()),
                   InferOutput("arm", [len(frame)], "BYTES", [r.arm for r in routes]),
                   InferOutput("model_version", [len(frame)], "BYTES",
                               [snapshot[r.serve].version for r in routes])]
        return InferResponse(request_id, self.name, outputs)


"""`hllm serve`: the experiment's model server, built on the KServe Python SDK.

    hllm serve --ab-config configs/ab/hllm-rollout.yaml --feature-repo runs/features \\
        --exposure-log runs/exposures

The same process runs as a KServe predictor in a cluster (infra/k8s) and on 127.0.0.1
here. Routes besides KServe's own (/v2/health/live, /v2/health/ready, /v2/models/...):

    POST /v1/feedback        {"request_id": ..., "user": ..., "clicked": [item ids]}
    POST /v1/admin/refresh   re-read the registry now (what the poller does every N s)
    GET  /v1/serving         each arm's version, swaps so far, exposure-log counters

Readiness is false until every arm's model is loaded; liveness answers from the start.
SIGTERM: uvicorn stops accepting, finishes the requests in flight, then the exposure log
writes everything it holds before the process exits, so every answered request is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from hllm import tracking
from hllm.errors import ConfigError, HLLMError
from hllm.experiment import load_ab_config
from hllm.online.arms import ArmModels
from hllm.online.endpoints import ArmEndpoint, RequestError, now
from hllm.online.exposure import ExposureLog, LogBackpressure
from hllm.online.processes import Siblings, listening_socket, supervise
from hllm.tasks import get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"  # the embedded default; a cluster pod passes 0.0.0.0
    port: int = 8080
    poll_seconds: float = 30.0  # how often the registry's aliases are re-read; 0: never
    workers: int = 2  # scoring threads (one per core)
    grace_seconds: int = 30  # how long SIGTERM waits for requests in flight
    ramp_percent: float | None = None  # the current ramp stage's treatment share
    kserve_route: bool = False  # infer through KServe's generic route (to compare)
    processes: int = 1  # server processes on one socket (hllm.online.processes)


def import_kserve_server():
    """kserve.model_server parses sys.argv when imported; it must not see ours."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve.model_server as model_server
    finally:
        sys.argv = argv
    return model_server


def build_app(endpoint: ArmEndpoint, options: ServeOptions, siblings: Siblings | None = None):
    """The uvicorn server with KServe's routes, ours, and readiness tied to the arms
    (of every process, when `siblings` share the socket)."""
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    model_server = import_kserve_server()
    app = model_server.app

    repository = ModelRepository()
    repository.update(endpoint)
    rest = RESTServer("kserve.model_server:app", DataPlane(repository),
                      ModelRepositoryExtension(model_registry=repository), options.port,
                      grace_period=options.grace_seconds)
    rest.config.host = options.host  # KServe binds 0.0.0.0; the default here is loopback

    # Before KServe's own routes, so these answer: KServe's readiness is true whenever the
    # port is open, and it logs a traceback for every 503 a probe gets while loading.
    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        is_ready = endpoint.ready and (siblings is None or siblings.all_loaded())
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    if not options.kserve_route:
        @app.post(f"/v2/models/{endpoint.name}/infer")
        async def infer(request: Request) -> Response:
            return await infer_route(endpoint, request)

        rest.config.app = InferFastPath(app, endpoint)  # uvicorn serves the wrapper

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}"
                             f": {e.get('msg')}" for e in exc.errors()[:5])
        return JSONResponse({"error": f"request body: {problems}"}, status_code=422)

    @app.exception_handler(LogBackpressure)
    async def backpressure(_: Request, exc: LogBackpressure) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise RequestError(400, "feedback body is not JSON") from None
        record = feedback_record(body)
        endpoint.exposures.append(record)
        return JSONResponse({"logged": True, "request_id": record["request_id"]})

    @app.post("/v1/admin/refresh")
    async def refresh() -> JSONResponse:
        try:
            if siblings is None:
                # Its own thread, not the scoring pool: loading a version takes seconds, and
                # the requests arriving meanwhile still need both scoring workers.
                changes = await asyncio.to_thread(endpoint.arms.refresh)
            else:
                changes = await refresh_every_process(siblings)
        except HLLMError as exc:
            raise RequestError(502, f"registry refresh failed, still serving the loaded "
                                    f"versions: {exc}") from exc
        return JSONResponse({"changes": changes, **status(endpoint, siblings)})

    @app.get("/v1/serving")
    async def serving() -> JSONResponse:
        return JSONResponse(status(endpoint, siblings))

    return rest


class InferFastPath:
    """ASGI in front of KServe's app: `POST /v2/models/<model>/infer` goes straight to
    infer_route, everything else (health, metadata, metrics, admin, feedback) to the app.

    Why: on the way to a route the app runs its middleware stack for every request:
    KServe's timing middleware (which reads the process CPU clock twice), FastAPI's
    exception, telemetry, body-limit and exit-stack layers, then routing. Under load that
    was about a third of the server's interpreter time per inference. Errors are answered
    by the app's own exception handlers (KServe's and ours), so a bad request gets the
    same status and body on either path.
    """

    def __init__(self, app: Any, endpoint: ArmEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint
        self.path = f"/v2/models/{endpoint.name}/infer"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await infer_route(self.endpoint, request)
        except Exception as exc:  # noqa: BLE001 - answered as the app's handlers answer it
            handler = next((self.app.exception_handlers[kind] for kind in type(exc).__mro__
                            if kind in self.app.exception_handlers), None)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


async def infer_route(endpoint: ArmEndpoint, request: Request) -> Response:
    """The model's Open Inference Protocol route, answered ahead of KServe's generic one.

    Same protocol and the same KServe objects (InferRequest.from_bytes, the model's
    __call__ with its Prometheus timings, InferResponse.to_rest, the binary-data
    extension), without what the generic route adds per request: a pydantic model of
    the body, then FastAPI's jsonable_encoder over the response. bench/serve_load.py
    measures the difference (`hllm serve --kserve-route` answers through KServe's route).
    """
    body = await request.body()
    header = request.headers.get("inference-header-content-length")
    try:
        json_length = int(header) if header is not None else len(body)
        payload = InferRequest.from_bytes(body, json_length, endpoint.name)
    except InvalidInput:
        raise
    except KeyError as exc:
        raise InvalidInput(f"request body: field {exc} is required (an inference request is "
                           '{"inputs": [{"name", "shape", "datatype", "data"}]})') from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"request body: not an inference request ({exc})") from None
    response, headers = await endpoint(payload, headers=dict(request.headers))
    rest, json_length = response.to_rest()
    if json_length is not None:  # binary outputs follow the JSON header
        return Response(rest, media_type="application/octet-stream",
                        headers={**headers, "inference-header-content-length": str(json_length)})
    return Response(orjson.dumps(rest, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json", headers=headers)


def feedback_record(body: Any) -> dict[str, Any]:
    """A click report as a log record, or RequestError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, "feedback must be a JSON object with request_id, user, clicked")
    unknown = sorted(set(body) - {"request_id", "user", "clicked"})
    if unknown:
        raise RequestError(400, f"feedback: unknown field(s) {', '.join(unknown)}")
    for key in ("request_id", "user"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise RequestError(400, f"feedback.{key}: a non-empty string is required")
    clicked = body.get("clicked")
    if not isinstance(clicked, list) or not all(isinstance(i, str) for i in clicked):
        raise RequestError(400, "feedback.clicked: a list of item id strings is required")
    return {"kind": "feedback", "request_id": body["request_id"], "time": now(),
            "user": body["user"], "clicked": clicked}


async def refresh_every_process(siblings: Siblings, timeout: float = 600) -> list[str]:
    """Ask every process to refresh; answer once all have (this one's change lines)."""
    generation = siblings.ask_refresh()
    deadline = time.monotonic() + timeout
    while not siblings.refreshed(generation):
        if time.monotonic() > deadline:
            raise RequestError(504, f"not every server process refreshed within {timeout:.0f} s")
        await asyncio.sleep(0.02)
    outcome = siblings.results.pop(generation, [])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def status(endpoint: ArmEndpoint, siblings: Siblings | None = None) -> dict[str, Any]:
    """This process's view (counters are per process when several share the socket)."""
    return {"model": endpoint.name, "ready": endpoint.ready,
            "process": {"pid": os.getpid(), "index": siblings.index if siblings else 0,
                        "of": siblings.count if siblings else 1},
            "arms": {arm: {"version": m.version, "ref": m.ref}
                     for arm, m in endpoint.arms.current().items()},
            "swaps": endpoint.arms.swaps,
            **({"batching": {"requests": b.requests, "model_calls": b.batches}}
               if (b := getattr(endpoint, "batcher", None)) else {}),
            "exposure_log": {"root": endpoint.exposures.root,
                             "pending": endpoint.exposures.pending,
                             "written": endpoint.exposures.written}}


def history_source(feature_repo: str | Path | None, data: str | None):
    from hllm.serving import DatasetHistory, OnlineHistory

    if feature_repo is not None:
        return OnlineHistory(feature_repo)
    if data is not None:
        return DatasetHistory(data)
    raise ConfigError("give --feature-repo (the Feast online store) or --data to read "
                      "users' histories")


def check_port(host: str, port: int) -> None:
    """One line now rather than uvicorn's exit after the models have loaded."""
    listening_socket(host, port).close()


def serve(ab_config: str | Path, exposure_log: str, feature_repo: str | Path | None = None,
          data: str | None = None, options: ServeOptions = ServeOptions()) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Errors before serving raise HLLMError."""
    cfg = load_ab_config(ab_config)
    tracking.registry_uri()  # a dead registry: one line now, not at the first request
    try:
        endpoint_class = get_task(cfg.gate.task).serving_endpoint()
    except ConfigError as exc:
        raise ConfigError(f"{ab_config}: gate.task: {exc}") from None
    if endpoint_class.needs_history and feature_repo is None and data is None:
        history_source(feature_repo, data)  # raises: one line naming the missing option
    if options.processes < 1:
        raise ConfigError(f"--processes {options.processes}: at least 1")
    if options.processes > 1:
        return supervise(serve_child, (str(ab_config), exposure_log, feature_repo, data, options),
                         options.processes, options.host, options.port)
    check_port(options.host, options.port)
    return serve_process(ab_config, exposure_log, feature_repo, data, options)


def serve_child(ab_config: str, exposure_log: str, feature_repo: str | Path | None,
                data: str | None, options: ServeOptions, sock: socket.socket,
                siblings: Siblings) -> None:
    """One of `--processes` (a fresh interpreter): log as the CLI does, exit with a code."""
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format=f"%(asctime)s %(levelname)s [{siblings.index}] %(name)s: %(message)s")
    try:
        code = serve_process(ab_config, exposure_log, feature_repo, data, options, sock, siblings)
    except HLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


def serve_process(ab_config: str | Path, exposure_log: str, feature_repo: str | Path | None,
                  data: str | None, options: ServeOptions, sock: socket.socket | None = None,
                  siblings: Siblings | None = None) -> int:
    """One server process: its arms, exposure-log writer and uvicorn loop (on `sock`, when
    the parent opened it for several processes)."""
    import faiss  # heavy imports, needed only once serving starts
    import torch

    cfg = load_ab_config(ab_config)
    endpoint_class = get_task(cfg.gate.task).serving_endpoint()
    kwargs: dict[str, Any] = {}
    if endpoint_class.needs_history:
        kwargs["history"] = history_source(feature_repo, data)
    # One line per request at 100s of requests a second is noise; errors still show.
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)  # parallel requests, not parallel kernels, on a few cores
    faiss.omp_set_num_threads(1)  # the same for the catalog index's searches
    exposures = ExposureLog(exposure_log)
    endpoint = endpoint_class(cfg.model, ArmModels(cfg), exposures, workers=options.workers,
                              ramp_percent=options.ramp_percent, **kwargs)
    rest = build_app(endpoint, options, siblings)
    stop_polling = threading.Event()
    failure: list[BaseException] = []

    def load_then_poll() -> None:
        try:
            endpoint.load()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
            rest._server.should_exit = True
            return
        log.info("ready: %s", {a: m.version for a, m in endpoint.arms.current().items()})
        if siblings is not None:
            siblings.loaded[siblings.index] = 1
            siblings.watch(endpoint.arms.refresh, stop_polling)
        if options.poll_seconds > 0:
            endpoint.arms.poll(options.poll_seconds, stop_polling)

    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        # uvicorn handles the signal, then raises it again once it has shut down; this
        # handler takes that second delivery, so the log below is still written.
        signal.signal(sig, lambda number, _frame: received.append(number))
    threading.Thread(target=load_then_poll, name="arms-load", daemon=True).start()
    log.info("serving %s on http://%s:%d (exposure log %s)", cfg.model, options.host,
             options.port, exposures.root)
    try:
        if sock is None:
            asyncio.run(rest.start())
        else:
            rest.create_application()
            asyncio.run(rest._server.serve(sockets=[sock]))
    finally:
        stop_polling.set()
        endpoint.stop()
        exposures.close()
        log.info("stopped: %d records in the exposure log", exposures.written)
    if failure:
        raise failure[0]
    return 0

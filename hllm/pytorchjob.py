"""Multi-node training as a Kubeflow PyTorchJob: render, run, fetch the result.

    manifest = render_pytorchjob("hllm-train-hllm-1a2b3c4d", CUDA_IMAGE,
                                 train_command("hllm", "s3://hllm-datasets/books", out),
                                 nodes=4, gpus_per_node=8)
    status = run_pytorchjob(manifest, timeout_s=86400, poll_s=30)

The manifest comes from one template, infra/k8s/base/pytorchjob.template.yaml (the
images carry it at the same path beside the package); this module only fills in what
changes per run. Every replica runs `python -m hllm.pytorchjob launch torchrun ...`:
torchrun reads its topology from the Training Operator's PET_* variables, the run
directory lives on a volume all nodes share (rank 0 writes it, every rank reads best/
back), and node 0 copies the finished run to an S3 prefix, which the pipeline step
downloads into its artifact (`train_distributed`).

The `kubernetes` client is imported inside the functions that talk to a cluster; this
module never imports kfp.
"""

from __future__ import annotations

import copy
import json
import os
import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hllm import storage
from hllm.config import load_config
from hllm.errors import HLLMError

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "base" / "pytorchjob.template.yaml"
GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
API_VERSION = f"{GROUP}/{VERSION}"
CONTAINER = "pytorch"  # the Training Operator finds the training container by this name
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_NAMESPACE = "hllm"
DEFAULT_OUTPUT_PREFIX = "s3://hllm-runs/pytorchjobs"
SHARED_MOUNT = "/workspace"  # the ReadWriteMany volume hllm-train-shared
DEFAULT_TIMEOUT_S = 24 * 3600
DEFAULT_POLL_S = 30.0
# Pods are named <job>-master-0 / <job>-worker-N and must stay valid DNS labels (<= 63).
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,48}[a-z0-9])?$")
SECRET_LIKE = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL)", re.IGNORECASE)


class PyTorchJobError(HLLMError):
    """The job could not be created, failed, vanished, or the cluster is unreachable."""


class PyTorchJobTimeout(PyTorchJobError):
    """The job did not finish in time; it has been deleted."""


# ------------------------------------------------------------------ rendering

def load_template(path: str | Path = TEMPLATE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PyTorchJobError(f"{path}: PyTorchJob template not found (it ships in the project "
                              "images at this path; run from a checkout or an image)")
    return yaml.safe_load(path.read_text())


def train_command(model: str, data: str, out: str, preset: str = "",
                  config_file: str = "") -> list[str]:
    """`torchrun --module hllm.cli train ...`; the topology comes from PET_* variables."""
    if model not in ("hllm", "sasrec"):
        raise ValueError(f"model must be 'hllm' or 'sasrec', not {model!r}")
    cmd = ["torchrun", "--module", "hllm.cli", "train", "--model", model, "--data", data,
           "--out", out]
    if preset:
        cmd += ["--preset", preset]
    if config_file:
        cmd += ["--config", config_file]
    return cmd


def job_name(model: str) -> str:
    """A fresh name per attempt: a retried pipeline step never collides with its last job."""
    return f"hllm-train-{model}-{uuid.uuid4().hex[:8]}"


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, not {value!r}")
    return value


def render_pytorchjob(name: str, image: str, command: Sequence[str], *, nodes: int,
                      gpus_per_node: int, namespace: str = DEFAULT_NAMESPACE,
                      run_dir: str | None = None, output_uri: str | None = None,
                      env: Mapping[str, str] | None = None,
                      active_deadline_s: int = DEFAULT_TIMEOUT_S,
                      template: str | Path = TEMPLATE) -> dict[str, Any]:
    """The PyTorchJob for one run: the template with this run's values filled in.

    Master: 1 replica; Worker: nodes - 1 replicas (none when nodes == 1); each replica
    gets `gpus_per_node` GPUs (requests == limits) and runs that many torchrun processes.
    `command` must be a torchrun command line (see `train_command`). `env` adds plain
    variables; credentials only ever come from the secret the template references.
    """
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"job name {name!r}: lowercase letters, digits and '-', starting "
                         "with a letter, at most 50 characters")
    if not isinstance(namespace, str) or not NAME.match(namespace):
        raise ValueError(f"namespace {namespace!r} is not a valid namespace name")
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} is not an image reference")
    nodes = _positive_int(nodes, "nodes")
    gpus_per_node = _positive_int(gpus_per_node, "gpus_per_node")
    _positive_int(active_deadline_s, "active_deadline_s")
    command = list(command)
    if not command or command[0] != "torchrun" or not all(isinstance(a, str) for a in command):
        raise ValueError(f"command must be a torchrun command line of strings, not {command!r}")
    extra = dict(env or {})
    for key, value in extra.items():
        if SECRET_LIKE.search(key):
            raise ValueError(f"env {key}: credentials come from the secret the template "
                             "references, never from a value in the manifest")
        if not isinstance(value, str):
            raise ValueError(f"env {key}: value must be a string, not {value!r}")
    run_dir = run_dir or f"{SHARED_MOUNT}/{name}"
    output_uri = output_uri or f"{DEFAULT_OUTPUT_PREFIX}/{name}"

    job = load_template(template)
    if job.get("apiVersion") != API_VERSION or job.get("kind") != KIND:
        raise PyTorchJobError(f"{template}: not a {API_VERSION} {KIND}")
    job["metadata"]["name"] = name
    job["metadata"]["namespace"] = namespace
    job["spec"]["nprocPerNode"] = str(gpus_per_node)
    job["spec"]["runPolicy"]["activeDeadlineSeconds"] = active_deadline_s
    replicas = job["spec"]["pytorchReplicaSpecs"]
    counts = {"Master": 1, "Worker": nodes - 1}
    for role in list(replicas):
        if counts.get(role, 0) == 0:
            del replicas[role]
            continue
        spec = replicas[role] = copy.deepcopy(replicas[role])  # YAML anchors share objects
        spec["replicas"] = counts[role]
        container = next(c for c in spec["template"]["spec"]["containers"]
                         if c["name"] == CONTAINER)
        container["image"] = image
        container["args"] = command
        values = {"HLLM_RUN_DIR": run_dir, "HLLM_OUTPUT_URI": output_uri, **extra}
        env = [{"name": e["name"], "value": values.pop(e["name"])} if e["name"] in values else e
               for e in container.get("env", [])]  # the template's order, values replaced
        container["env"] = env + [{"name": k, "value": v} for k, v in values.items()]
        for part in ("requests", "limits"):
            container["resources"][part][GPU_RESOURCE] = gpus_per_node
    return job


# ------------------------------------------------------------------ running

def job_state(job: Mapping[str, Any]) -> tuple[str, str]:
    """(state, message) from a PyTorchJob's status: Succeeded / Failed win, else the latest."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true = [c for c in conditions if c.get("status") == "True"]
    for terminal in ("Succeeded", "Failed"):
        for cond in true:
            if cond.get("type") == terminal:
                return terminal, cond.get("message", "")
    if true:
        return true[-1].get("type", "Unknown"), true[-1].get("message", "")
    return "Pending", ""


def _check_manifest(manifest: Any) -> tuple[str, str]:
    if not isinstance(manifest, Mapping):
        raise ValueError("manifest must be a mapping (see render_pytorchjob)")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise ValueError(f"manifest is a {manifest.get('apiVersion')} {manifest.get('kind')}, "
                         f"not a {API_VERSION} {KIND}")
    meta = manifest.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise ValueError("manifest needs metadata.name and metadata.namespace")
    if "Master" not in ((manifest.get("spec") or {}).get("pytorchReplicaSpecs") or {}):
        raise ValueError(f"PyTorchJob {namespace}/{name} has no Master replica")
    return name, namespace


def _api_clients():
    """CustomObjectsApi and CoreV1Api: in-cluster credentials first, then a kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise PyTorchJobError(
                "no Kubernetes configuration: not running in a pod with a service account "
                f"token, and no usable kubeconfig (KUBECONFIG or ~/.kube/config): {exc}") from exc
    return client.CustomObjectsApi(), client.CoreV1Api()


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    try:
        detail = json.loads(body).get("message", "") if body else ""
    except (ValueError, AttributeError):
        detail = str(body)
    return f"{getattr(exc, 'status', '')} {getattr(exc, 'reason', '')} {detail}".strip()


def _master_log(core, name: str, namespace: str, lines: int = 40) -> str:
    try:
        return core.read_namespaced_pod_log(f"{name}-master-0", namespace, tail_lines=lines)
    except Exception as exc:  # noqa: BLE001 - the log is a courtesy; the failure is reported anyway
        return f"(no log: {exc.__class__.__name__})"


def run_pytorchjob(manifest: Mapping[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S,
                   poll_s: float = DEFAULT_POLL_S) -> dict[str, Any]:
    """Create the job, wait until it succeeds, and return {name, namespace, state, status}.

    Raises PyTorchJobError when it cannot be created, fails (with the master's last log
    lines) or disappears, and PyTorchJobTimeout after deleting it when `timeout_s` passes.
    """
    from kubernetes.client.exceptions import ApiException

    name, namespace = _check_manifest(manifest)
    if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, not {timeout_s!r}")
    if not isinstance(poll_s, (int, float)) or poll_s <= 0 or poll_s > timeout_s:
        raise ValueError(f"poll_s must be > 0 and <= timeout_s, not {poll_s!r}")
    api, core = _api_clients()
    where = f"PyTorchJob {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dict(manifest))
    except ApiException as exc:
        hint = (" (is the Kubeflow Training Operator installed, and may this service account "
                "create pytorchjobs? see infra/k8s/base/rbac.yaml)") if exc.status in (403, 404) else ""
        raise PyTorchJobError(f"cannot create {where}: {_api_message(exc)}{hint}") from exc
    deadline = time.monotonic() + timeout_s
    state = "Pending"
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            state, message = job_state(job)
        except ApiException as exc:
            if exc.status == 404:
                raise PyTorchJobError(f"{where} disappeared while running (deleted by hand?)") from exc
            if exc.status is not None and exc.status < 500:
                raise PyTorchJobError(f"cannot read {where}: {_api_message(exc)}") from exc
            job, message = {}, ""  # API server hiccup: poll again
        if state == "Succeeded":
            return {"name": name, "namespace": namespace, "state": state,
                    "status": job.get("status", {})}
        if state == "Failed":
            raise PyTorchJobError(f"{where} failed: {message or 'no message'}\n"
                                  f"--- last lines of {name}-master-0 ---\n"
                                  f"{_master_log(core, name, namespace)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            try:
                api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                    propagation_policy="Background")
                fate = "deleted it"
            except ApiException as exc:
                fate = f"could not delete it ({_api_message(exc)}): delete it by hand"
            raise PyTorchJobTimeout(f"{where} did not finish within {timeout_s:g} s "
                                    f"(last state: {state}); {fate}")
        time.sleep(min(poll_s, remaining))


# ------------------------------------------------------------------ the pipeline's entry point

def train_distributed(model: str, data: str, out: str | Path, *, preset: str = "",
                      config_file: str = "", nodes: int, gpus_per_node: int, image: str,
                      namespace: str = DEFAULT_NAMESPACE,
                      output_prefix: str = DEFAULT_OUTPUT_PREFIX,
                      timeout_s: float = DEFAULT_TIMEOUT_S,
                      poll_s: float = DEFAULT_POLL_S) -> dict[str, Any]:
    """Train on `nodes` x `gpus_per_node` GPUs as a PyTorchJob; the run lands in `out`.

    Returns the run's metrics.json (what hllm.train.train returns in one process).
    """
    if not storage.is_s3(data):
        raise ValueError(f"data {data!r}: every node reads the data itself; pass an s3:// URI")
    name = job_name(model)
    output_uri = f"{output_prefix.rstrip('/')}/{name}"
    run_dir = f"{SHARED_MOUNT}/{name}"
    manifest = render_pytorchjob(
        name, image, train_command(model, data, run_dir, preset, config_file),
        nodes=nodes, gpus_per_node=gpus_per_node, namespace=namespace, run_dir=run_dir,
        output_uri=output_uri, active_deadline_s=int(timeout_s))
    run_pytorchjob(manifest, timeout_s=timeout_s, poll_s=poll_s)
    storage.download_dir(output_uri, out)
    metrics = Path(out) / "metrics.json"
    if not metrics.is_file():
        raise PyTorchJobError(f"{output_uri}: the job succeeded but left no metrics.json")
    return json.loads(metrics.read_text())


def train_placed(model: str, data: str, out: str | Path, *, preset: str = "", config_file: str = "",
                 nodes: int = 1, gpus_per_node: int = 1, image: str = "",
                 feature_repo: str = "") -> dict[str, Any]:
    """The pipeline's train step: in this process at 1 x 1, as a PyTorchJob above that.

    `feature_repo`: read the training windows from it (hllm.feast_windows). A PyTorchJob's
    pods cannot see this step's artifact, so they cut the same windows in memory.
    """
    if nodes > 1 or gpus_per_node > 1:
        if not image:
            raise ValueError("a multi-GPU train step needs the image its PyTorchJob runs")
        if feature_repo:
            log.info("the PyTorchJob cuts its training windows in memory (the feature repo "
                     "%s is this step's artifact, out of the job's reach)", feature_repo)
        return train_distributed(model, data, out, preset=preset, config_file=config_file,
                                 nodes=nodes, gpus_per_node=gpus_per_node, image=image)
    from hllm.train import train

    # The pipeline's validate step checked this data (same data_version) and gates this branch.
    return train(load_config(preset or None, config_file or None), model, data, out, validate=False,
                 feature_repo=feature_repo or None)


# ------------------------------------------------------------------ inside the job's pods

def launch(command: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run `command`; then, on node 0 only, copy HLLM_RUN_DIR to HLLM_OUTPUT_URI."""
    environ = os.environ if environ is None else environ
    if not command:
        raise ValueError("launch: no command to run")
    rc = subprocess.call(list(command))
    if rc != 0:
        return rc
    if int(environ.get("PET_NODE_RANK", "0")) != 0:
        return 0
    run_dir, output_uri = environ.get("HLLM_RUN_DIR"), environ.get("HLLM_OUTPUT_URI")
    if run_dir and output_uri:
        copied = storage.upload_dir(run_dir, output_uri)
        print(f"copied {len(copied)} files from {run_dir} to {output_uri}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "launch" or len(argv) < 2:
        print("usage: python -m hllm.pytorchjob launch <command> [args...]", file=sys.stderr)
        return 2
    return launch(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

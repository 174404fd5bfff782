"""hllm.pytorchjob: the rendered PyTorchJob (replicas, GPUs, image, a command torchrun and
`hllm train` both accept, no credentials, schema-valid, the template's structure), the
in-pod launcher, and run_pytorchjob's argument and configuration errors. No cluster is
contacted: creating and watching a real job is left to a cluster (infra/OPERATIONS.md)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hllm import pytorchjob as pj

SCHEMA = json.loads((ROOT / "infra" / "k8s" / "schemas" / "pytorchjob-v1.schema.json").read_text())
TEMPLATE = yaml.safe_load(pj.TEMPLATE.read_text())
IMAGE = "registry.example.com/hllm:cuda"
DATA = "s3://hllm-datasets/books"


def _render(nodes=3, gpus=4, **kw):
    command = pj.train_command("hllm", DATA, "/workspace/job-a", preset="hllm-1b")
    return pj.render_pytorchjob("job-a", IMAGE, command, nodes=nodes, gpus_per_node=gpus, **kw)


def _container(job, role):
    return job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"][0]


def test_template_ships_where_the_module_looks():
    assert pj.TEMPLATE == ROOT / "infra" / "k8s" / "base" / "pytorchjob.template.yaml"
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "infra" / dockerfile).read_text()
        assert "COPY infra/k8s/base/pytorchjob.template.yaml ./infra/k8s/base/" in text
    ignore = (ROOT / "infra" / ".dockerignore").read_text().splitlines()
    assert ignore.index("!infra/k8s/base/pytorchjob.template.yaml") > ignore.index("infra/k8s")


@pytest.mark.parametrize("nodes,gpus", [(1, 8), (2, 1), (4, 8)])
def test_replicas_gpus_and_image(nodes, gpus):
    job = _render(nodes, gpus)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    if nodes == 1:
        assert "Worker" not in replicas
    else:
        assert replicas["Worker"]["replicas"] == nodes - 1
    assert job["spec"]["nprocPerNode"] == str(gpus)
    for role in replicas:
        c = _container(job, role)
        assert c["name"] == "pytorch" and c["image"] == IMAGE
        assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus


def test_command_is_accepted_by_torchrun_and_hllm_train(monkeypatch):
    from torch.distributed.run import get_args_parser

    from hllm.cli import build_parser

    job = _render(nodes=3, gpus=4)
    # the operator's environment on the second node
    for key, value in {"PET_NNODES": "3", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1",
                       "PET_MASTER_ADDR": "job-a-master-0", "PET_MASTER_PORT": "23456"}.items():
        monkeypatch.setenv(key, value)
    for role in ("Master", "Worker"):
        c = _container(job, role)
        assert c["command"] == ["python", "-m", "hllm.pytorchjob", "launch"]
        assert c["args"][0] == "torchrun"
        run = get_args_parser().parse_args(c["args"][1:])
        assert (run.nnodes, run.nproc_per_node, run.node_rank) == ("3", "4", 1)
        assert run.module and run.training_script == "hllm.cli"
        train = build_parser().parse_args(run.training_script_args)
        assert (train.model, train.data, train.out, train.preset) == (
            "hllm", DATA, "/workspace/job-a", "hllm-1b")


def test_schema_valid():
    for job in (_render(1, 1), _render(3, 4), _render(8, 8)):
        jsonschema.validate(job, SCHEMA)
        for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                          "metadata": {"name": role.lower()},
                                          "template": replica["template"]}, "1.30.0", strict=True)
        json.dumps(job)  # what the API client sends


def test_rendered_job_is_the_template_with_the_run_filled_in():
    """Only the documented per-run fields differ from infra/k8s/base/pytorchjob.template.yaml."""
    job = _render(3, 4, namespace="training", active_deadline_s=3600)
    assert job["metadata"]["name"] == "job-a" and job["metadata"]["namespace"] == "training"
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    undone = copy.deepcopy(job)
    undone["metadata"].update(name=TEMPLATE["metadata"]["name"],
                              namespace=TEMPLATE["metadata"]["namespace"])
    undone["spec"]["nprocPerNode"] = TEMPLATE["spec"]["nprocPerNode"]
    undone["spec"]["runPolicy"]["activeDeadlineSeconds"] = \
        TEMPLATE["spec"]["runPolicy"]["activeDeadlineSeconds"]
    for role, replica in undone["spec"]["pytorchReplicaSpecs"].items():
        original = TEMPLATE["spec"]["pytorchReplicaSpecs"][role]
        replica["replicas"] = original["replicas"]
        c, o = _container(undone, role), original["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["HLLM_RUN_DIR"] == "/workspace/job-a"
        assert env["HLLM_OUTPUT_URI"] == f"{pj.DEFAULT_OUTPUT_PREFIX}/job-a"
        assert list(env) == [e["name"] for e in o["env"]]
        c["env"] = o["env"]
        c["image"], c["args"] = o["image"], o["args"]
        for part in ("requests", "limits"):
            c["resources"][part]["nvidia.com/gpu"] = o["resources"][part]["nvidia.com/gpu"]
    assert undone == TEMPLATE


def test_no_secret_values_and_extra_env():
    job = _render(2, 1, env={"NCCL_DEBUG": "INFO", "AWS_DEFAULT_REGION": "eu-west-1"})
    for role in ("Master", "Worker"):
        c = _container(job, role)
        env = {e["name"]: e for e in c["env"]}
        assert env["NCCL_DEBUG"]["value"] == "INFO"  # overrides the template's value
        assert [e["name"] for e in c["env"]].count("NCCL_DEBUG") == 1
        assert {"secretRef": {"name": "hllm-s3"}} in c["envFrom"]
        assert not [n for n in env if pj.SECRET_LIKE.search(n)]
    with pytest.raises(ValueError, match="credentials"):
        _render(env={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ValueError, match="credentials"):
        _render(env={"MLFLOW_TRACKING_PASSWORD": "x"})


@pytest.mark.parametrize("kwargs,match", [
    ({"nodes": 0}, "nodes"), ({"nodes": 2.0}, "nodes"), ({"nodes": True}, "nodes"),
    ({"gpus_per_node": 0}, "gpus_per_node"), ({"namespace": "Bad_NS"}, "namespace"),
    ({"name": "Job_A"}, "job name"), ({"name": "j" * 51}, "job name"),
    ({"image": "has space:1"}, "image"), ({"image": ""}, "image"),
    ({"command": ["python", "-m", "hllm.cli", "train"]}, "torchrun"), ({"command": []}, "torchrun"),
    ({"active_deadline_s": 0}, "active_deadline_s"),
])
def test_render_refuses_bad_arguments(kwargs, match):
    args = {"name": "job-a", "image": IMAGE, "nodes": 2, "gpus_per_node": 1,
            "command": pj.train_command("sasrec", DATA, "/workspace/job-a")}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pj.render_pytorchjob(args.pop("name"), args.pop("image"), args.pop("command"), **args)


def test_train_command_and_job_names():
    assert pj.train_command("sasrec", DATA, "/w/r", config_file="configs/x.yaml") == [
        "torchrun", "--module", "hllm.cli", "train", "--model", "sasrec", "--data", DATA,
        "--out", "/w/r", "--config", "configs/x.yaml"]
    with pytest.raises(ValueError, match="model"):
        pj.train_command("bert4rec", DATA, "/w/r")
    names = {pj.job_name("sasrec") for _ in range(20)}
    assert len(names) == 20 and all(pj.NAME.match(n) for n in names)


# ---------------------------------------------------------------- run_pytorchjob without a cluster

@pytest.mark.parametrize("manifest,match", [
    ([], "mapping"), ({"apiVersion": "batch/v1", "kind": "Job"}, "not a kubeflow.org/v1"),
    ({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "a"}}, "namespace"),
    ({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
      "metadata": {"name": "a", "namespace": "b"}, "spec": {"pytorchReplicaSpecs": {}}}, "Master"),
])
def test_run_refuses_bad_manifests(manifest, match):
    with pytest.raises(ValueError, match=match):
        pj.run_pytorchjob(manifest, timeout_s=10, poll_s=1)


@pytest.mark.parametrize("timeout_s,poll_s", [(0, 1), (-5, 1), (10, 0), (10, 11), ("10", 1)])
def test_run_refuses_bad_timeouts(timeout_s, poll_s):
    with pytest.raises(ValueError, match="timeout_s|poll_s"):
        pj.run_pytorchjob(_render(), timeout_s=timeout_s, poll_s=poll_s)


def test_run_without_kubernetes_configuration_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(pj.PyTorchJobError, match="no Kubernetes configuration"):
        pj.run_pytorchjob(_render(), timeout_s=10, poll_s=1)


def test_train_distributed_needs_s3_data(tmp_path):
    with pytest.raises(ValueError, match="s3://"):
        pj.train_distributed("hllm", str(tmp_path), tmp_path / "out", nodes=2, gpus_per_node=1,
                             image=IMAGE)


def test_job_state_reads_conditions():
    def cond(kind, status="True", message=""):
        return {"type": kind, "status": status, "message": message}

    assert pj.job_state({}) == ("Pending", "")
    assert pj.job_state({"status": {"conditions": [cond("Created"), cond("Running")]}})[0] == "Running"
    assert pj.job_state({"status": {"conditions": [
        cond("Created"), cond("Running", "False"), cond("Succeeded", message="done")]}}) == ("Succeeded", "done")
    assert pj.job_state({"status": {"conditions": [
        cond("Running"), cond("Failed", message="OOMKilled")]}}) == ("Failed", "OOMKilled")
    assert pj.job_state({"status": {"conditions": [cond("Succeeded", "False")]}}) == ("Pending", "")


# ---------------------------------------------------------------- inside the job's pods

def _writer(run_dir: Path) -> list[str]:
    code = (f"import pathlib; p = pathlib.Path({str(run_dir)!r}); (p / 'best').mkdir(parents=True);"
            "(p / 'metrics.json').write_text('{}'); (p / 'best' / 'model.safetensors').write_text('w')")
    return [sys.executable, "-c", code]


def test_launch_publishes_from_node_zero_only(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    env = {"HLLM_RUN_DIR": str(run), "HLLM_OUTPUT_URI": str(out), "PET_NODE_RANK": "0"}
    assert pj.launch(_writer(run), env) == 0
    assert (out / "metrics.json").is_file() and (out / "best" / "model.safetensors").is_file()

    run1, out1 = tmp_path / "run1", tmp_path / "out1"
    env1 = {"HLLM_RUN_DIR": str(run1), "HLLM_OUTPUT_URI": str(out1), "PET_NODE_RANK": "1"}
    assert pj.launch(_writer(run1), env1) == 0
    assert run1.is_dir() and not out1.exists()


def test_launch_passes_failures_through_and_publishes_nothing(tmp_path):
    env = {"HLLM_RUN_DIR": str(tmp_path), "HLLM_OUTPUT_URI": str(tmp_path / "out"),
           "PET_NODE_RANK": "0"}
    assert pj.launch([sys.executable, "-c", "raise SystemExit(3)"], env) == 3
    assert not (tmp_path / "out").exists()
    assert pj.main([]) == 2 and pj.main(["launch"]) == 2


# ---------------------------------------------------------------- the train components

def test_train_components_take_nodes_and_gpus_per_node():
    from components import train_hllm, train_sasrec
    from components.images import CUDA_IMAGE

    for component in (train_hllm, train_sasrec):
        inputs = component.component_spec.inputs
        assert inputs["nodes"].default == 1 and inputs["gpus_per_node"].default == 1
        assert inputs["job_image"].default == ""  # the pipeline passes it (below)
        assert component.component_spec.implementation.container.image == CUDA_IMAGE


def test_pipeline_passes_the_job_image_and_node_counts(tmp_path):
    from components.images import CUDA_IMAGE
    from pipelines.training import compile_pipeline

    spec = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"))).read_text()))
    tasks = {n: t for c in spec["components"].values() for n, t in c.get("dag", {}).get("tasks", {}).items()}
    for name in ("train-hllm", "train-sasrec"):
        params = tasks[name]["inputs"]["parameters"]
        assert params["job_image"]["runtimeValue"]["constant"] == CUDA_IMAGE
        assert params["nodes"]["componentInputParameter"].endswith("train_nodes")
        assert params["gpus_per_node"]["componentInputParameter"].endswith("train_gpus_per_node")


def test_train_placed_goes_to_a_job_only_above_one_gpu(tmp_path):
    # Above 1 x 1 it is the job path (which needs an image and s3:// data) ...
    with pytest.raises(ValueError, match="image"):
        pj.train_placed("hllm", "s3://bucket/data", tmp_path / "a", nodes=2)
    with pytest.raises(ValueError, match="s3://"):
        pj.train_placed("hllm", str(tmp_path), tmp_path / "b", gpus_per_node=2, image="img:1")
    # ... at 1 x 1 it trains here: a bad local dataset fails in the reader, not the job code.
    from hllm.errors import HLLMError

    with pytest.raises(HLLMError):
        pj.train_placed("sasrec", str(tmp_path / "missing"), tmp_path / "c", preset="cpu-tiny")

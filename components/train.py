"""Train HLLM and the ID-based baseline (SASRec); the artifact is the run directory.

`data_version` is not used by the body: it is part of the task's cache key, so new
data (or code) under the same URI trains again instead of reusing a stale model.

`nodes` x `gpus_per_node`: with the defaults (1 x 1) the model trains inside this step's
pod, as always. With more, the step launches a Kubeflow PyTorchJob instead (Master +
nodes - 1 Workers, torchrun with gpus_per_node processes each; hllm.pytorchjob), waits
for it, and copies the run it wrote to S3 into the artifact. `data` must then be an
s3:// URI. `job_image` is the image the job runs; the pipeline passes the CUDA image it
was compiled with; left empty, a multi-GPU step refuses to start (hllm.pytorchjob.train_placed).

`features`: the pipeline's Feast repo, built for this run's data settings; the training
windows are read from it by point-in-time retrieval (hllm.feast_windows), the same
windows the in-memory path cuts. Without it (a step run alone), they are cut in memory.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_hllm(data: str, data_version: str, preset: str, config_file: str,
               model: Output[Model], metrics: Output[Metrics], nodes: int = 1,
               gpus_per_node: int = 1, job_image: str = "",
               features: Optional[Input[Dataset]] = None):
    """hllm.pytorchjob.train_placed("hllm"): config.yaml, best/, log.jsonl, metrics.json."""
    from hllm.pytorchjob import train_placed
    from components.artifacts import log_metrics, step_timer

    with step_timer(model, "train_hllm"):
        result = train_placed("hllm", data, model.path, preset=preset, config_file=config_file,
                              nodes=nodes, gpus_per_node=gpus_per_node, image=job_image,
                              feature_repo=features.path if features is not None else "")
    log_metrics(metrics, result)
    model.metadata.update(model="hllm", preset=preset, split_sha256=result["split_sha256"],
                          nodes=nodes, gpus_per_node=gpus_per_node)


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_sasrec(data: str, data_version: str, preset: str, config_file: str,
                 model: Output[Model], metrics: Output[Metrics], nodes: int = 1,
                 gpus_per_node: int = 1, job_image: str = "",
                 features: Optional[Input[Dataset]] = None):
    """hllm.pytorchjob.train_placed("sasrec"): the baseline the gate compares against."""
    from hllm.pytorchjob import train_placed
    from components.artifacts import log_metrics, step_timer

    with step_timer(model, "train_sasrec"):
        result = train_placed("sasrec", data, model.path, preset=preset, config_file=config_file,
                              nodes=nodes, gpus_per_node=gpus_per_node, image=job_image,
                              feature_repo=features.path if features is not None else "")
    log_metrics(metrics, result)
    model.metadata.update(model="sasrec", preset=preset, split_sha256=result["split_sha256"],
                          nodes=nodes, gpus_per_node=gpus_per_node)

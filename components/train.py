"""Train HLLM and the ID-based baseline (SASRec); the artifact is the run directory.

`data_version` is not used by the body: it is part of the task's cache key, so new
data (or code) under the same URI trains again instead of reusing a stale model.
"""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_hllm(data: str, data_version: str, preset: str, config_file: str,
               model: Output[Model], metrics: Output[Metrics]):
    """hllm.train.train(model_name="hllm"): config.yaml, best/, log.jsonl, metrics.json."""
    from hllm.config import load_config
    from hllm.report import log_metrics, step_timer
    from hllm.train import train

    with step_timer(model, "train_hllm"):
        result = train(load_config(preset, config_file or None), "hllm", data, model.path)
    log_metrics(metrics, result)
    model.metadata.update(model="hllm", preset=preset, split_sha256=result["split_sha256"])


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_sasrec(data: str, data_version: str, preset: str, config_file: str,
                 model: Output[Model], metrics: Output[Metrics]):
    """hllm.train.train(model_name="sasrec"): the baseline the gate compares against."""
    from hllm.config import load_config
    from hllm.report import log_metrics, step_timer
    from hllm.train import train

    with step_timer(model, "train_sasrec"):
        result = train(load_config(preset, config_file or None), "sasrec", data, model.path)
    log_metrics(metrics, result)
    model.metadata.update(model="sasrec", preset=preset, split_sha256=result["split_sha256"])

"""Score a trained run again from its saved weights: the evidence the gate reads."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_model(data: str, model: Input[Model], evaluation: Output[Dataset],
                   metrics: Output[Metrics]):
    """hllm.train.evaluate_run on a view of the run: metrics.json + test_ranks.npy come out.

    The input artifact is never written to: the run's config and weights are linked
    into the output directory and evaluate_run writes its results beside them.
    """
    import os
    import shutil

    from components.artifacts import log_metrics, step_timer
    from hllm.train import evaluate_run

    out = evaluation.path
    os.makedirs(out, exist_ok=True)
    for name in ("config.yaml", "best"):
        os.symlink(os.path.join(model.path, name), os.path.join(out, name))
    shutil.copyfile(os.path.join(model.path, "metrics.json"), os.path.join(out, "metrics.json"))
    with step_timer(evaluation, "evaluate"):
        result = evaluate_run(out, data, progress=False)
    for name in ("config.yaml", "best"):
        os.unlink(os.path.join(out, name))
    log_metrics(metrics, result)
    evaluation.metadata.update(model=result.get("model", ""), split_sha256=result["split_sha256"])

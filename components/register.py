"""Register the HLLM run (recommender + ONNX Item LLM) in MLflow as `challenger`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_model(model: Input[Model], onnx: Input[Model], validation: Input[Dataset],
                   features: Input[Dataset], registered_name: str, onnx_name: str,
                   tracking_uri: str, pipeline_run_id: str, kfp_run_id: str,
                   registration: Output[Dataset]) -> str:
    """hllm.registry.register on a copy of the run; returns the new recommender version.

    The copy (weights, config, metrics; no optimizer checkpoint) lives in this step's
    artifact, so the version's `run_dir` tag points at files that stay, and the
    training artifact is never written to.
    """
    import json
    import os
    import shutil

    from hllm.registry import register
    from components.artifacts import step_timer

    run = os.path.join(registration.path, "run")
    shutil.copytree(model.path, run, ignore=shutil.ignore_patterns("checkpoint*"))
    with step_timer(registration, "register"):
        result = register(run, name=registered_name, onnx_name=onnx_name, onnx_dir=onnx.path,
                          pipeline_run_id=pipeline_run_id or kfp_run_id,
                          validation=validation.path,
                          feature_repo=os.path.join(features.path, "feature_repo"),
                          tracking_uri=tracking_uri or None)
    versions = [{"name": v.name, "version": str(v.version)} for v in result.versions]
    record = {"model_name": registered_name, "version": versions[0]["version"],
              "mlflow_run_id": result.run_id, "tags": result.tags, "versions": versions}
    with open(os.path.join(registration.path, "registration.json"), "w") as fh:
        json.dump(record, fh, indent=2)
    registration.metadata.update(model_name=registered_name, version=record["version"])
    return record["version"]

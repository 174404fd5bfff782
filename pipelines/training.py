"""The HLLM training pipeline: validate -> features -> train (HLLM, SASRec) -> evaluate ->
export ONNX -> register -> gate -> report.

Data that fails validation ends the run in the `data-rejected` branch: nothing is
trained or registered and the validation report (HTML) is the run's output. Steps
that only read inputs are cached; register, gate and report always run.
"""

# (no `from __future__ import annotations`: KFP reads the pipeline signature's real types)

from kfp import dsl

import components as c
from pipelines.platform import LARGE, MEDIUM, SMALL, Platform

PIPELINE_NAME = "hllm-training"


def build_pipeline(platform: Platform | None = None):
    """The pipeline function, decorated with `platform`'s placement, secrets and retries."""
    p = platform or Platform.from_env()

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, evaluate, register and gate HLLM")
    def hllm_training(data: str,
                      data_version: str = "",
                      preset: str = "cpu-default",
                      config_file: str = "",
                      ab_config: str = "configs/ab/hllm-rollout.yaml",
                      registered_name: str = "hllm",
                      onnx_name: str = "hllm-item-llm",
                      tracking_uri: str = "",
                      max_history: int = 50,
                      min_user_interactions: int = 3,
                      text_coverage: float = 0.9,
                      onnx_precision: str = "fp32",
                      train_nodes: int = 1,
                      train_gpus_per_node: int = 1,
                      pipeline_run_id: str = "",
                      report_uri: str = ""):
        """data_version: content hash (+ code version) of `data`; keys the cache of every step.

        train_nodes x train_gpus_per_node: above 1 x 1 each train step runs as a Kubeflow
        PyTorchJob (hllm.pytorchjob; `data` must then be an s3:// URI).

        pipeline_run_id: tagged on the registered version (default: the KFP run id).
        report_uri: where the report will be published (default: its KFP artifact URI).
        """
        run_id = pipeline_run_id  # placeholders are resolved by KFP inside the task
        validate = c.validate_data(data=data, data_version=data_version,
                                   min_user_interactions=min_user_interactions,
                                   text_coverage=text_coverage).set_display_name("validate")
        p.retry(p.data_access(p.size(validate, SMALL)))
        with dsl.If(validate.outputs["Output"] == True, name="data-valid"):  # noqa: E712
            features = c.build_features(data=data, max_history=max_history,
                                        validation=validate.outputs["validation"],
                                        preset=preset, config_file=config_file)
            p.retry(p.data_access(p.size(features, MEDIUM)))
            trained = {}
            for name, op in (("hllm", c.train_hllm), ("sasrec", c.train_sasrec)):
                task = op(data=data, data_version=data_version, preset=preset,
                          config_file=config_file, nodes=train_nodes,
                          gpus_per_node=train_gpus_per_node, job_image=c.CUDA_IMAGE,
                          features=features.outputs["features"])
                trained[name] = p.retry(p.data_access(p.gpu(p.size(task, LARGE))))
            evaluated = {}
            for name, task in trained.items():
                ev = c.evaluate_model(data=data, model=task.outputs["model"])
                evaluated[name] = p.retry(p.data_access(p.size(ev, MEDIUM)))
                evaluated[name].set_display_name(f"evaluate-{name}")
            onnx = c.export_onnx(model=trained["hllm"].outputs["model"], precision=onnx_precision)
            p.retry(p.gpu(p.size(onnx, MEDIUM)))
            register = c.register_model(
                model=trained["hllm"].outputs["model"], onnx=onnx.outputs["onnx"],
                validation=validate.outputs["validation"], features=features.outputs["features"],
                registered_name=registered_name, onnx_name=onnx_name, tracking_uri=tracking_uri,
                pipeline_run_id=run_id, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            p.uncached(p.retry(p.registry_access(p.data_access(p.size(register, MEDIUM)))))
            gate = c.gate_model(version=register.outputs["Output"], ab_config=ab_config,
                                baseline=evaluated["sasrec"].outputs["evaluation"],
                                tracking_uri=tracking_uri)
            p.uncached(p.retry(p.registry_access(p.size(gate, SMALL))))
            report = c.report_run(
                validation=validate.outputs["validation"], features=features.outputs["features"],
                hllm=trained["hllm"].outputs["model"], sasrec=trained["sasrec"].outputs["model"],
                hllm_evaluation=evaluated["hllm"].outputs["evaluation"],
                sasrec_evaluation=evaluated["sasrec"].outputs["evaluation"],
                onnx=onnx.outputs["onnx"], registration=register.outputs["registration"],
                gate=gate.outputs["gate"], tracking_uri=tracking_uri, report_uri=report_uri,
                pipeline_run_id=run_id)
            p.uncached(p.retry(p.registry_access(p.size(report, SMALL))))
        with dsl.Else(name="data-invalid"):
            rejected = c.data_rejected(validation=validate.outputs["validation"],
                                       pipeline_run_id=run_id)
            p.uncached(p.size(rejected, SMALL))

    return hllm_training


def compile_pipeline(out: str, platform: Platform | None = None) -> str:
    """Write the pipeline's IR YAML to `out`; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(platform), package_path=out)
    return out

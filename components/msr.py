"""LLM4MSR steps: validate -> knowledge features -> train (backbone, + LLM4MSR) -> evaluate ->
register; the gate and the rejected-data ending are the shared components."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE, CUDA_IMAGE

@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_msr_data(data: str, data_version: str, preset: str, config_file: str,
                      validation: Output[Dataset], report: Output[HTML]) -> bool:
    """hllm.msr.validation.validate_msr: the raw table and the CTR rows built from it."""
    import shutil

    from hllm.msr.config import load_msr_config
    from hllm.msr.validation import validate_msr
    from components.artifacts import step_timer

    with step_timer(validation, "validate"):
        cfg = load_msr_config(preset or None, config_file or None)
        result = validate_msr(data, validation.path, cfg.data)
    shutil.copyfile(f"{validation.path}/validation.html", report.path)
    validation.metadata.update(success=result.success, data=data, data_version=data_version)
    print(result.summary())
    return result.success


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def msr_knowledge(data: str, data_version: str, preset: str, config_file: str,
                  features: Input[Dataset], knowledge: Output[Dataset]):
    """hllm.msr.features.knowledge_features: frozen-LLM vectors, saved and pushed to Feast."""
    import os

    from hllm.msr.config import load_msr_config
    from hllm.msr.features import knowledge_features
    from components.artifacts import step_timer

    with step_timer(knowledge, "knowledge"):
        result = knowledge_features(data, load_msr_config(preset or None, config_file or None),
                                    knowledge.path, feature_repo=os.path.join(features.path, "feature_repo"),
                                    progress=False)
    knowledge.metadata.update(prompts=result["user"]["prompts"] + result["scenario"]["prompts"],
                              cache_hit=result["user"]["cache_hit"], dim=result["dim"])


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_msr_backbone(data: str, data_version: str, preset: str, config_file: str,
                       model: Output[Model], metrics: Output[Metrics]):
    """hllm.msr.run.train_run(llm4msr=False): the baseline the gate compares against."""
    from hllm.msr.config import load_msr_config
    from hllm.msr.run import train_run
    from components.artifacts import log_metrics, step_timer

    with step_timer(model, "train_backbone"):
        result = train_run(load_msr_config(preset or None, config_file or None), data, model.path,
                           llm4msr=False, progress=False)
    log_metrics(metrics, result, ("auc", "logloss"))
    model.metadata.update(model=result["model"], split_sha256=result["split_sha256"])


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_msr_llm4msr(data: str, data_version: str, preset: str, config_file: str,
                      knowledge: Input[Dataset], model: Output[Model], metrics: Output[Metrics]):
    """hllm.msr.run.train_run(llm4msr=True) on the knowledge step's vectors (no LLM here)."""
    from hllm.msr.config import load_msr_config
    from hllm.msr.run import train_run
    from components.artifacts import log_metrics, step_timer

    with step_timer(model, "train_llm4msr"):
        result = train_run(load_msr_config(preset or None, config_file or None), data, model.path,
                           llm4msr=True, progress=False, knowledge_dir=knowledge.path)
    log_metrics(metrics, result, ("auc", "logloss"))
    model.metadata.update(model=result["model"], split_sha256=result["split_sha256"])


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_msr(data: str, model: Input[Model], evaluation: Output[Dataset],
                 metrics: Output[Metrics]):
    """hllm.msr.run.evaluate_run: metrics.json + test_predictions.npz, the gate's evidence."""
    from hllm.msr.run import evaluate_run
    from components.artifacts import log_metrics, step_timer

    with step_timer(evaluation, "evaluate"):
        result = evaluate_run(model.path, evaluation.path, data)
    log_metrics(metrics, result, ("auc", "logloss"))
    evaluation.metadata.update(model=result["model"], split_sha256=result["split_sha256"])


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_msr_model(model: Input[Model], validation: Input[Dataset], knowledge: Input[Dataset],
                       registered_name: str, tracking_uri: str, pipeline_run_id: str,
                       kfp_run_id: str, registration: Output[Dataset]) -> str:
    """hllm.msr.registry.register_msr on a copy of the run; returns the new version."""
    import json
    import os
    import shutil

    from hllm.msr.registry import register_msr
    from components.artifacts import step_timer

    run = os.path.join(registration.path, "run")
    shutil.copytree(model.path, run)
    with step_timer(registration, "register"):
        result = register_msr(run, registered_name, validation=validation.path,
                              feature_repo=os.path.join(knowledge.path, "feature_repo"),
                              pipeline_run_id=pipeline_run_id or kfp_run_id,
                              tracking_uri=tracking_uri or None)
    version = str(result.versions[0].version)
    record = {"model_name": registered_name, "version": version, "mlflow_run_id": result.run_id,
              "tags": result.tags, "versions": [{"name": registered_name, "version": version}]}
    with open(os.path.join(registration.path, "registration.json"), "w") as fh:
        json.dump(record, fh, indent=2)
    registration.metadata.update(model_name=registered_name, version=version)
    return version


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report_msr(validation: Input[Dataset], features: Input[Dataset], knowledge: Input[Dataset],
               backbone: Input[Model], llm4msr: Input[Model], backbone_evaluation: Input[Dataset],
               llm4msr_evaluation: Input[Dataset], registration: Input[Dataset],
               gate: Input[Dataset], tracking_uri: str, report_uri: str, pipeline_run_id: str,
               report: Output[HTML], summary: Output[Artifact]):
    """components.artifacts.publish_report with hllm.msr.report's writer; links it from the version."""
    from components.artifacts import publish_report
    from hllm.msr.report import write_report

    steps = {"validate": validation, "features": features, "knowledge": knowledge,
             "train_backbone": backbone, "train_llm4msr": llm4msr,
             "evaluate_backbone": backbone_evaluation, "evaluate_llm4msr": llm4msr_evaluation,
             "register": registration, "gate": gate}
    publish_report(steps, report, summary, writer=write_report, tracking_uri=tracking_uri,
                   report_uri=report_uri, pipeline_run_id=pipeline_run_id)

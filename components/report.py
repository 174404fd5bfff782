"""The run report (summary.json + self-contained report.html), and the rejected-data ending."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report_run(validation: Input[Dataset], features: Input[Dataset], hllm: Input[Model],
               sasrec: Input[Model], hllm_evaluation: Input[Dataset],
               sasrec_evaluation: Input[Dataset], onnx: Input[Model],
               registration: Input[Dataset], gate: Input[Dataset], tracking_uri: str,
               report_uri: str, pipeline_run_id: str, report: Output[HTML],
               summary: Output[Artifact]):
    """components.artifacts.publish_report over the step artifacts; links the report from the version."""
    from components.artifacts import publish_report

    steps = {"validate": validation, "features": features, "train_hllm": hllm,
             "train_sasrec": sasrec, "evaluate_hllm": hllm_evaluation,
             "evaluate_sasrec": sasrec_evaluation, "export_onnx": onnx,
             "register": registration, "gate": gate}
    publish_report(steps, report, summary, tracking_uri=tracking_uri, report_uri=report_uri,
                   pipeline_run_id=pipeline_run_id)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def data_rejected(validation: Input[Dataset], pipeline_run_id: str, report: Output[HTML],
                  summary: Output[Artifact]):
    """The end of a run whose data failed validation: its output is the validation report."""
    import shutil

    from components.artifacts import step_record
    from hllm.report import write_rejected

    result = write_rejected(validation.path, summary.path, pipeline_run_id=pipeline_run_id,
                            steps={"validate": step_record(validation)})
    shutil.copyfile(f"{validation.path}/validation.html", report.path)
    print(f"data rejected; nothing trained or registered: {result['validation']['failed']}")

"""The LLM4MSR pipeline: validate -> features -> knowledge -> train (backbone alone, backbone +
LLM4MSR) -> evaluate -> register -> gate on per-scenario AUC -> report.

The knowledge step is the only one that runs the LLM (on a GPU node at scale); it is
cached like every read-only step, and its vectors also go to Feast so serving never
runs the LLM. The backbone alone is trained on the same split as the baseline the gate
requires LLM4MSR to beat, overall and in every scenario. Data that fails validation
ends in `data-rejected` with the validation report as output, as in the HLLM pipeline.
"""

# (no `from __future__ import annotations`: KFP reads the pipeline signature's real types)

from kfp import dsl

import components as c
from pipelines.platform import LARGE, MEDIUM, SMALL, Platform

PIPELINE_NAME = "llm4msr-training"


def build_pipeline(platform: Platform | None = None):
    p = platform or Platform.from_env()

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="LLM4MSR: knowledge, train, evaluate, register and gate per scenario")
    def llm4msr_training(data: str,
                         data_version: str = "",
                         preset: str = "cpu-default",
                         config_file: str = "",
                         ab_config: str = "configs/ab/llm4msr-rollout.yaml",
                         registered_name: str = "llm4msr",
                         tracking_uri: str = "",
                         max_history: int = 50,
                         pipeline_run_id: str = "",
                         report_uri: str = ""):
        """preset / config_file: an MSR preset (hllm.msr.config) and a YAML overriding it."""
        run_id = pipeline_run_id
        validate = c.validate_msr_data(data=data, data_version=data_version, preset=preset,
                                       config_file=config_file).set_display_name("validate")
        p.retry(p.data_access(p.size(validate, SMALL)))
        with dsl.If(validate.outputs["Output"] == True, name="data-valid"):  # noqa: E712
            features = c.build_features(data=data, max_history=max_history,
                                        validation=validate.outputs["validation"])
            p.retry(p.data_access(p.size(features, MEDIUM)))
            knowledge = c.msr_knowledge(data=data, data_version=data_version, preset=preset,
                                        config_file=config_file, features=features.outputs["features"])
            p.retry(p.data_access(p.gpu(p.size(knowledge, LARGE))))
            backbone = c.train_msr_backbone(data=data, data_version=data_version, preset=preset,
                                            config_file=config_file).after(validate)
            p.retry(p.data_access(p.size(backbone, MEDIUM)))
            llm4msr = c.train_msr_llm4msr(data=data, data_version=data_version, preset=preset,
                                          config_file=config_file,
                                          knowledge=knowledge.outputs["knowledge"])
            p.retry(p.data_access(p.size(llm4msr, MEDIUM)))
            evaluated = {}
            for name, task in (("backbone", backbone), ("llm4msr", llm4msr)):
                ev = c.evaluate_msr(data=data, model=task.outputs["model"])
                evaluated[name] = p.retry(p.data_access(p.size(ev, SMALL)))
                evaluated[name].set_display_name(f"evaluate-{name}")
            register = c.register_msr_model(
                model=llm4msr.outputs["model"], validation=validate.outputs["validation"],
                knowledge=knowledge.outputs["knowledge"], registered_name=registered_name,
                tracking_uri=tracking_uri, pipeline_run_id=run_id,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER).after(evaluated["llm4msr"])
            p.uncached(p.retry(p.registry_access(p.data_access(p.size(register, MEDIUM)))))
            gate = c.gate_model(version=register.outputs["Output"], ab_config=ab_config,
                                baseline=evaluated["backbone"].outputs["evaluation"],
                                tracking_uri=tracking_uri)
            p.uncached(p.retry(p.registry_access(p.size(gate, SMALL))))
            report = c.report_msr(
                validation=validate.outputs["validation"], features=features.outputs["features"],
                knowledge=knowledge.outputs["knowledge"], backbone=backbone.outputs["model"],
                llm4msr=llm4msr.outputs["model"],
                backbone_evaluation=evaluated["backbone"].outputs["evaluation"],
                llm4msr_evaluation=evaluated["llm4msr"].outputs["evaluation"],
                registration=register.outputs["registration"], gate=gate.outputs["gate"],
                tracking_uri=tracking_uri, report_uri=report_uri, pipeline_run_id=run_id)
            p.uncached(p.retry(p.registry_access(p.size(report, SMALL))))
        with dsl.Else(name="data-invalid"):
            rejected = c.data_rejected(validation=validate.outputs["validation"],
                                       pipeline_run_id=run_id)
            p.uncached(p.size(rejected, SMALL))

    return llm4msr_training


def compile_pipeline(out: str, platform: Platform | None = None) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(platform), package_path=out)
    return out

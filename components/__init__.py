"""KFP v2 components, one per pipeline step, each a thin wrapper over one `hllm` function.

Every component imports hllm inside its body (it runs in the project image), exchanges
typed artifacts (Dataset, Model, Metrics, HTML, Markdown) and records its wall time in
its main output artifact's metadata (hllm.report.step_timer).
"""

from components.evaluate import evaluate_model
from components.export_onnx import export_onnx
from components.features import build_features
from components.gate import gate_model
from components.images import CPU_IMAGE, CUDA_IMAGE
from components.msr import (evaluate_msr, msr_knowledge, register_msr_model, report_msr,
                            train_msr_backbone, train_msr_llm4msr, validate_msr_data)
from components.register import register_model
from components.report import data_rejected, report_run
from components.train import train_hllm, train_sasrec
from components.validate import validate_data

__all__ = ["CPU_IMAGE", "CUDA_IMAGE", "build_features", "data_rejected", "evaluate_model",
           "evaluate_msr", "export_onnx", "gate_model", "msr_knowledge", "register_model",
           "register_msr_model", "report_msr", "report_run", "train_hllm", "train_msr_backbone",
           "train_msr_llm4msr", "train_sasrec", "validate_data", "validate_msr_data"]

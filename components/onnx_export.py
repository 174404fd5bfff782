"""Export the trained Item LLM to ONNX, with its parity figures against PyTorch."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def export_onnx(model: Input[Model], precision: str, onnx: Output[Model]):
    """hllm.onnx_export.export_item_llm into the artifact (item_llm.onnx, export.json)."""
    import json
    import os

    from hllm.onnx_export import MANIFEST, export_item_llm
    from components.artifacts import step_timer

    with step_timer(onnx, "export_onnx"):
        out = export_item_llm(model.path, onnx.path, [p for p in precision.split(",") if p])
    manifest = json.loads(open(os.path.join(out, MANIFEST)).read())
    diffs = [v["max_abs_diff"] for v in manifest["parity_vs_pytorch"].values() if "max_abs_diff" in v]
    onnx.metadata.update(max_abs_diff=max(diffs) if diffs else None, files=manifest["files"])

"""The promotion gate: champion moves only if the challenger beat it (and the baseline)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gate_model(version: str, ab_config: str, baseline: Input[Dataset], tracking_uri: str,
               gate: Output[Dataset], rollout_plan: Output[Markdown]) -> str:
    """hllm.gate.gate against the SASRec evaluation; a refusal is an outcome, not an error."""
    import shutil

    from hllm.gate import gate as decide
    from components.artifacts import step_timer

    with step_timer(gate, "gate"):
        result = decide(version, ab_config, baseline=baseline.path,
                        tracking_uri=tracking_uri or None, out=gate.path)
    shutil.copyfile(f"{gate.path}/rollout_plan.md", rollout_plan.path)
    gate.metadata.update(decision=result.decision, reasons=result.reasons)
    print(f"gate: {result.decision}: " + ("; ".join(result.reasons) or "all checks passed"))
    return result.decision

"""Build the Feast feature repository (user histories, item text) from validated data."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_features(data: str, max_history: int, validation: Input[Dataset],
                   features: Output[Dataset]):
    """hllm.features.build_features into the artifact; validation was the gate upstream."""
    from hllm.features import build_features as build
    from components.artifacts import step_timer

    with step_timer(features, "features"):
        # validate_data already ran GX on this data (its artifact is the input here).
        result = build(data, features.path, max_history=max_history, validation=None)
    features.metadata.update(counts=result.counts, repo=str(result.repo))

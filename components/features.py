"""Build the Feast feature repository (user histories, item text) from validated data."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_features(data: str, max_history: int, validation: Input[Dataset],
                   features: Output[Dataset], preset: str = "", config_file: str = ""):
    """hllm.features.build_for_training into the artifact; validation was the gate upstream.

    With the run's `preset`/`config_file`, user histories are cut from its data settings,
    at least data.max_history + 1 long, so the train steps read their windows from here,
    and a frozen Item LLM fills item_embedding (the train step then finds its vectors in
    the embedding cache). Without them: every interaction, item_embedding empty.
    """
    from hllm.config import load_config
    from hllm.features import build_features as build, build_for_training
    from components.artifacts import step_timer

    with step_timer(features, "features"):
        # validate_data already ran GX on this data (its artifact is the input here).
        if preset or config_file:
            result = build_for_training(data, features.path,
                                        load_config(preset or None, config_file or None),
                                        max_history=max_history, validation=None)
        else:
            result = build(data, features.path, max_history=max_history, validation=None)
    features.metadata.update(counts=result.counts, repo=str(result.repo))

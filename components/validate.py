"""Validate the dataset; the run continues only when every expectation held."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_data(data: str, data_version: str, min_user_interactions: int, text_coverage: float,
                  validation: Output[Dataset], report: Output[HTML]) -> bool:
    """hllm.validation.validate_dataset; `data_version` only keys the cache (content + code)."""
    import shutil

    from components.artifacts import step_timer
    from hllm.validation import ValidationConfig, validate_dataset

    with step_timer(validation, "validate"):
        cfg = ValidationConfig(min_user_interactions=min_user_interactions,
                               text_coverage=text_coverage)
        result = validate_dataset(data, validation.path, cfg)
    shutil.copyfile(f"{validation.path}/validation.html", report.path)
    validation.metadata.update(success=result.success, data=data, data_version=data_version)
    print(result.summary())
    return result.success

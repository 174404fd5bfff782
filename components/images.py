"""Container images the components run in; infra/ builds exactly these (see infra/images.yaml).

The repository is configurable at import time (HLLM_IMAGE=registry/name), so a fork
or a private mirror compiles the same pipeline against its own images. The tags are
fixed: `cpu` for every step, `cuda` for the steps that ask for a GPU.
"""

from __future__ import annotations

import os

DEFAULT_REPOSITORY = "ghcr.io/hllm-platform/hllm"
REPOSITORY = os.environ.get("HLLM_IMAGE", DEFAULT_REPOSITORY)
CPU_TAG, CUDA_TAG = "cpu", "cuda"
CPU_IMAGE = f"{REPOSITORY}:{CPU_TAG}"
CUDA_IMAGE = f"{REPOSITORY}:{CUDA_TAG}"

"""The User LLM and model loading from directories and s3:// prefixes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hllm import storage
from hllm.config import cpu_tiny
from hllm.errors import ConfigError
from hllm.models.pretrained import load_backbone
from hllm.models.user_llm import UserLLM

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def test_user_llm_is_causal_over_item_vectors():
    torch.manual_seed(0)
    user = UserLLM(cpu_tiny().user_llm).eval()
    x = torch.randn(2, 6, 32)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        full = user(x, mask)
        changed = x.clone()
        changed[:, 4:] = torch.randn(2, 2, 32)  # the future must not change the past
        again = user(changed, mask)
    torch.testing.assert_close(full[:, :4], again[:, :4])
    assert not torch.allclose(full[:, 4:], again[:, 4:])
    # The word-embedding table is unused and frozen.
    assert not user.backbone.get_input_embeddings().weight.requires_grad


def test_user_llm_from_a_pretrained_directory_and_s3(tmp_path, s3_env):
    torch.manual_seed(0)
    source = load_backbone(None, "random", cpu_tiny().user_llm.arch)
    source.save_pretrained(tmp_path / "tiny")
    cfg = dataclasses.replace(cpu_tiny().user_llm, path=str(tmp_path / "tiny"), init="pretrained")
    local = UserLLM(cfg)
    client = storage.s3_client()
    client.create_bucket(Bucket="models")
    for f in (tmp_path / "tiny").iterdir():
        client.upload_file(str(f), "models", f"tiny-llama/{f.name}")
    remote = UserLLM(dataclasses.replace(cfg, path="s3://models/tiny-llama"))
    x, mask = torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        expected = source(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        torch.testing.assert_close(local(x, mask), expected)
        torch.testing.assert_close(remote(x, mask), expected)


def test_pretrained_without_path_is_refused():
    with pytest.raises(ConfigError, match="init: pretrained needs a path"):
        UserLLM(dataclasses.replace(cpu_tiny().user_llm, init="pretrained"))


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        load_backbone(str(tmp_path / "empty"), "pretrained", {})

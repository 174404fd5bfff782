"""Files that could run code when loaded are refused, and the code never runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hllm.config import tiny_llama
from hllm.errors import ConfigError


class _WritesMarker:
    """Unpickling this calls Path.touch(marker): the shape of a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_trainer_state_is_refused_and_never_runs(toy_data, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "marker"
    common = ["--preset", "cpu-tiny", "--model", "sasrec", "--data", str(toy_data),
              "--out", str(out), "--set", "train.epochs=1"]
    first = subprocess.run([sys.executable, "-m", "hllm.cli", "train", *common,
                            "--set", "train.max_steps=1"], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-1500:]
    state = torch.load(out / "checkpoint" / "trainer.pt", weights_only=True)
    torch.save({**state, "scheduler": _WritesMarker(marker)}, out / "checkpoint" / "trainer.pt")
    resumed = subprocess.run([sys.executable, "-m", "hllm.cli", "train", *common, "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr[-1500:]
    assert "trainer.pt: refused" in resumed.stderr
    assert not marker.exists()


def test_model_directory_asking_for_its_own_code_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hllm.models.pretrained import load_backbone

    model_dir, marker = tmp_path / "model", tmp_path / "marker"
    LlamaForCausalLM(LlamaConfig(**tiny_llama())).save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig as EvilConfig, LlamaModel as EvilModel\n")
    for init in ("pretrained", "random"):
        with pytest.raises(ConfigError, match="auto_map asks to run the model's own code"):
            load_backbone(str(model_dir), init, {})
    assert not marker.exists()
    # Without auto_map the same directory loads.
    del config["auto_map"]
    (model_dir / "config.json").write_text(json.dumps(config))
    assert load_backbone(str(model_dir), "pretrained", {}).config.model_type == "llama"

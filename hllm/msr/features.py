"""Knowledge as features: the pipeline's knowledge step, written once, read by training and serving.

    hllm msr knowledge --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml \
        --out runs/msr/knowledge --feature-repo runs/features

OUT/knowledge.safetensors holds `scenario` (P, K) and `user` (U, K) vectors with the key
order in its metadata; OUT/texts.json the generated answers when generation was on.
With a feature repo, the same vectors are pushed to Feast (`scenario_knowledge`,
`user_knowledge`, online and offline) so serving reads them and never runs the LLM.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hllm.errors import ConfigError, DataError
from hllm.msr.config import MSRConfig
from hllm.msr.data import Encoded, encode, load_rows

FILE = "knowledge.safetensors"


def knowledge_features(data: str, cfg: MSRConfig, out: str | Path, *, device: str = "cpu",
                       feature_repo: str | Path | None = None, progress: bool | None = None
                       ) -> dict[str, Any]:
    """Compute (or load from the cache) both knowledge tables; save them; optionally push to Feast.

    The Feast repo is copied into OUT/feature_repo before the push, so the input repo
    (another step's artifact) is never written to.
    """
    from hllm.msr.knowledge import build_knowledge

    out = Path(out)
    rows = load_rows(data, cfg.data)
    enc = encode(rows)
    scen, users = build_knowledge(rows, enc, cfg.knowledge, device=device, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"scenarios": json.dumps(scen.keys), "users": json.dumps(users.keys)}
    save_file({"scenario": scen.vectors.contiguous(), "user": users.vectors.contiguous()},
              str(out / FILE), metadata=meta)
    if users.texts:
        (out / "texts.json").write_text(json.dumps({"user": users.texts}, ensure_ascii=False, indent=1))
    result: dict[str, Any] = {"scenario": vars(scen.stats), "user": vars(users.stats),
                              "dim": int(scen.vectors.shape[1])}
    if feature_repo is not None:
        from hllm.features import feature_repo_dir, push_knowledge

        src = feature_repo_dir(feature_repo)
        target = out / "feature_repo"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(src, target, symlinks=True)
        result["feature_repo"] = str(target)
        result["pushed"] = push_knowledge(target, (scen.keys, scen.vectors.numpy()),
                                          (users.keys, users.vectors.numpy()), users.texts)
    (out / "knowledge.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def knowledge_from_feature_store(repo: str | Path, enc: Encoded
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The scenario and user vectors read back from the Feast views they were pushed to,
    in the order `enc` indexes them (the online store: one row per key, the newest push)."""
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    from hllm.features import feature_repo_dir

    repo = feature_repo_dir(repo)
    store = FeatureStore(repo_path=str(repo))
    tables = []
    for view, key, keys in (("scenario_knowledge", "scenario", enc.scenarios),
                            ("user_knowledge", "user_id", enc.knowledge_users)):
        got = store.get_online_features(features=[f"{view}:vector"],
                                        entity_rows=[{key: str(k)} for k in keys]).to_dict()
        missing = [k for k, v in zip(keys, got["vector"]) if v is None]
        if missing:
            raise DataError(f"{repo}: {view} has no vector for {key} "
                            f"{', '.join(map(str, missing[:5]))}"
                            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                            + "; push the knowledge for this data (hllm msr knowledge --feature-repo)")
        tables.append(torch.tensor(got["vector"], dtype=torch.float32))
    return tables[0], tables[1]


def load_knowledge(directory: str | Path, enc: Encoded
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, str] | None]:
    """The knowledge step's vectors, checked to be in the order `enc` indexes them.

    When the step pushed them to Feast (DIR/feature_repo), training reads them from those
    feature views, as serving does; otherwise from DIR/knowledge.safetensors.
    """
    if (Path(directory) / "feature_repo").is_dir():
        scen, user = knowledge_from_feature_store(Path(directory) / "feature_repo", enc)
        texts_path = Path(directory) / "texts.json"
        texts = json.loads(texts_path.read_text())["user"] if texts_path.is_file() else None
        return scen, user, texts
    path = Path(directory) / FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; write it with `hllm msr knowledge --out {directory}`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        scen, user = f.get_tensor("scenario"), f.get_tensor("user")
    if json.loads(meta.get("scenarios", "[]")) != list(enc.scenarios):
        raise DataError(f"{path}: scenarios {meta.get('scenarios')} differ from the data's "
                        f"{enc.scenarios}; recompute the knowledge for this data")
    if json.loads(meta.get("users", "[]")) != list(enc.knowledge_users):
        raise DataError(f"{path}: its users differ from the data's {len(enc.knowledge_users)} users; "
                        "recompute the knowledge for this data")
    texts_path = Path(directory) / "texts.json"
    texts = json.loads(texts_path.read_text())["user"] if texts_path.is_file() else None
    return scen, user, texts

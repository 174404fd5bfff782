"""Does the knowledge carry signal? Linear probes on the LLM's knowledge vectors.

LLM4MSR's meta networks can only use what the frozen LLM put into its vectors. Before
tuning them, ask the vectors directly: can a linear model read, for users it was not fit
on, what the user prompt described (the user's positive rate in each scenario, the age
group, the gender)? Each probe is ridge regression on standardised vectors, scored by
k-fold cross-validation over users, with the ridge strength chosen inside each training
fold (never on the fold being scored). The same probe on random Gaussian vectors of the
same shape is the control: a probe that does no better than it finds nothing.

The targets come from the training split and the user table, which the prompt states in
words: a probe measures what the vector keeps of its own prompt, an upper bound on what
the meta networks can take from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from hllm.msr.data import MSRRows
from hllm.msr.evaluate import auc

if TYPE_CHECKING:  # the probes need numpy only; knowledge loads torch and the LLM
    from hllm.msr.knowledge import Knowledge

ALPHAS = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


@dataclass
class ProbeResult:
    target: str
    metric: str  # r2 | auc
    users: int
    knowledge: float  # the probe on the LLM's vectors, held-out users
    random: float  # the same probe on random vectors of the same shape
    chance: float  # what predicting without features scores (r2 0, auc 0.5)

    def to_dict(self) -> dict:
        return asdict(self)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and intercept of ridge regression (y may have several columns)."""
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, my - mx @ w


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def _fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, seed: int) -> np.ndarray:
    """Ridge with alpha chosen by 4-fold CV on the training users only."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    inner = _folds(len(x_tr), 4, seed + 1)
    best, best_err = ALPHAS[0], np.inf
    for alpha in ALPHAS:
        err = 0.0
        for held in inner:
            fit = np.setdiff1d(np.arange(len(x_tr)), held)
            w, b = _ridge(x_tr[fit], y_tr[fit], alpha)
            err += float(((x_tr[held] @ w + b - y_tr[held]) ** 2).sum())
        if err < best_err:
            best, best_err = alpha, err
    w, b = _ridge(x_tr, y_tr, best)
    return x_te @ w + b


def cross_validated(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions for every row of x (y: (n,) or (n, c))."""
    y2 = y.reshape(len(y), -1).astype(np.float64)
    out = np.empty_like(y2)
    for held in _folds(len(x), folds, seed):
        fit = np.setdiff1d(np.arange(len(x)), held)
        out[held] = _fit_predict(x[fit].astype(np.float64), y2[fit], x[held].astype(np.float64), seed)
    return out.reshape(y.shape) if y.ndim == 1 else out


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def score(kind: str, y: np.ndarray, pred: np.ndarray) -> float:
    return _r2(y, pred) if kind == "r2" else float(auc(y.astype(np.float64), pred))


CHANCE = {"r2": 0.0, "auc": 0.5}


def probe_targets(rows: MSRRows, users: Sequence[str], min_rows: int = 5
                  ) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """target name -> (metric, row mask over `users`, values) from the training split and
    the user table. Positive rates need `min_rows` training rows in the scenario."""
    index = pd.Index([str(u) for u in users])
    train = rows.splits["train"]
    targets: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    for scen in rows.scenarios:
        part = train[train["scenario"] == scen].groupby("user_id")["label"].agg(["mean", "size"])
        part = part[part["size"] >= min_rows].reindex(index)
        mask = part["mean"].notna().to_numpy()
        targets[f"positive rate: {scen}"] = ("r2", mask, part["mean"].to_numpy()[mask])
    profile = rows.users.assign(user_id=rows.users["user_id"].astype(str)).set_index("user_id")
    profile = profile.reindex(index)
    if "gender" in profile:
        gender = profile["gender"].astype("string").str.upper().str[:1]
        mask = gender.isin(["M", "F"]).to_numpy()
        targets["gender (F)"] = ("auc", mask, (gender[mask] == "F").to_numpy().astype(float))
    if "age" in profile:
        # 24, or "20s" where the table keeps decades, or an ML-1M age code (18, 25, ...)
        age = pd.to_numeric(profile["age"].astype("string").str.extract(r"(\d+)")[0], errors="coerce")
        mask = age.notna().to_numpy()
        targets["age"] = ("r2", mask, age.to_numpy(dtype=float)[mask])
    return targets


def run_probes(vectors: np.ndarray, users: Sequence[str], rows: MSRRows, *, folds: int = 5,
               seed: int = 0) -> list[ProbeResult]:
    """Every target's probe on the knowledge vectors and on a random control of the same shape."""
    control = np.random.default_rng(seed).standard_normal(vectors.shape)
    results = []
    for name, (kind, mask, y) in probe_targets(rows, users).items():
        if mask.sum() < 4 * folds:
            continue  # too few users to hold any out
        scores = [score(kind, y, cross_validated(x[mask], y, folds, seed)) for x in (vectors, control)]
        results.append(ProbeResult(name, kind, int(mask.sum()), *scores, CHANCE[kind]))
    return results


def scenario_similarity(vectors: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Mean pairwise cosine of the scenario vectors, and of random vectors of the same shape.

    With one vector per scenario (4 on ml-100k) no probe can be fit; how alike the vectors
    are says whether the meta networks get scenario-specific input at all."""
    def mean_cos(v: np.ndarray) -> float:
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        sims = v @ v.T
        return float(sims[~np.eye(len(v), dtype=bool)].mean())

    control = np.random.default_rng(seed).standard_normal(vectors.shape)
    return mean_cos(vectors), mean_cos(control)


def render(results: Sequence[ProbeResult], scenario_cos: tuple[float, float] | None = None) -> str:
    lines = [f"{'target':34} {'metric':8} {'users':>5} {'knowledge':>9} {'random':>7} {'chance':>7}"]
    for r in results:
        lines.append(f"{r.target:34} {r.metric:8} {r.users:5d} {r.knowledge:9.3f} {r.random:7.3f} "
                     f"{r.chance:7.3f}")
    if scenario_cos is not None:
        lines.append(f"scenario vectors: mean pairwise cosine {scenario_cos[0]:.3f} "
                     f"(random vectors {scenario_cos[1]:.3f})")
    return "\n".join(lines)


@dataclass
class KnowledgeProbes:
    """One table's knowledge, probed: every user target, and how alike the scenario vectors are."""
    probes: list[ProbeResult]
    scenario_cosine: float
    scenario_cosine_random: float
    knowledge: dict  # the user knowledge's KnowledgeStats: prompts, tokens, seconds, cache hit

    def to_dict(self) -> dict:
        return {"probes": [r.to_dict() for r in self.probes], "scenario_cosine": self.scenario_cosine,
                "scenario_cosine_random": self.scenario_cosine_random, "knowledge": self.knowledge}

    def render(self) -> str:
        return render(self.probes, (self.scenario_cosine, self.scenario_cosine_random))


def probe_knowledge(scenarios: Knowledge, users: Knowledge, rows: MSRRows, *, folds: int = 5,
                    seed: int = 0) -> KnowledgeProbes:
    """`hllm msr probe`: the user probes and the scenario similarity of one build_knowledge result.

    One function, so the CLI and every benchmark report the same probes the same way."""
    cosine = scenario_similarity(scenarios.vectors.numpy(), seed=seed)
    return KnowledgeProbes(run_probes(users.vectors.numpy(), users.keys, rows, folds=folds, seed=seed),
                           *cosine, knowledge=vars(users.stats))

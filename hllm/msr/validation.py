"""Great Expectations suites for the multi-scenario CTR table the MSR models train on.

    hllm msr validate --data ../shared/data/ml-100k --out runs/msr/validation

Two layers, one report (validation.json / validation.html, the format `hllm validate`
writes, so registry lineage tags read it the same way):

1. the raw dataset, through the suites of hllm.validation (ids, timestamps, duplicate
   events, unknown items; `label` spelled 0/1, 0.0/1.0 or true/false when the table
   carries it, and `scenario` in the genre groups only under an explicit genre-group rule);
2. the CTR rows after the scenario rule and label rule are applied:
   * `ctr_rows`: user_id, item_id, scenario, label, timestamp present and non-null,
     label in {0, 1}, scenario in the declared set;
   * `scenario_splits`: one row per (split, scenario): every scenario has at least
     `min_rows_per_scenario` rows and both classes in every split, so per-scenario AUC
     exists on validation and test and the gate can compare it.

A table the rules cannot turn into rows (no rating column, unreadable file) is a
failed check named after the file, never a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hllm.errors import DataError
from hllm.msr.config import MSRDataConfig
from hllm.msr.data import GENRE_GROUPS, ROW_COLUMNS, SPLITS, MSRRows, load_rows
from hllm.validation import (Check, ValidationConfig, ValidationReport, run_suites,
                             validate_dataset, write_report)


@dataclass(frozen=True)
class MSRValidationConfig:
    min_rows_per_scenario: int = 50  # per split; below this a per-scenario AUC is noise
    min_user_interactions: int = 1  # CTR rows need no per-user history (unlike leave-one-out)


def declared_scenarios(cfg: MSRDataConfig) -> tuple[str, ...]:
    """The names an explicit genre-group rule allows in a `scenario` column; empty under
    `auto` (a table with its own column is read as given) and `column`."""
    return tuple(name for name, _ in GENRE_GROUPS) if cfg.scenario_rule == "genre-group" else ()


def _ctr_suites(rows: MSRRows, scenarios: tuple[str, ...], vcfg: MSRValidationConfig):
    import great_expectations.expectations as gxe

    frame = pd.concat([rows.splits[s].assign(split=s) for s in SPLITS], ignore_index=True)
    exp = [gxe.ExpectColumnToExist(column=c) for c in ROW_COLUMNS]
    exp += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ROW_COLUMNS if c in frame]
    if "label" in frame:
        exp.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]))
    if scenarios and "scenario" in frame:
        exp.append(gxe.ExpectColumnValuesToBeInSet(column="scenario", value_set=list(scenarios)))
    names = list(scenarios) or sorted(frame["scenario"].dropna().unique())
    cells = []
    for split in SPLITS:
        part = rows.splits[split]
        for name in names:
            sc = part[part["scenario"] == name]
            cells.append({"split": split, "scenario": name, "rows": len(sc),
                          "positives": int(sc["label"].sum()), "negatives": int((sc["label"] == 0).sum())})
    per = pd.DataFrame(cells)
    per_exp = [gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=vcfg.min_rows_per_scenario),
               gxe.ExpectColumnValuesToBeBetween(column="positives", min_value=1),
               gxe.ExpectColumnValuesToBeBetween(column="negatives", min_value=1)]
    return [("ctr_rows", frame, exp), ("scenario_splits", per, per_exp)]


def validate_msr(data: str, out: str | Path | None = None, cfg: MSRDataConfig = MSRDataConfig(),
                 vcfg: MSRValidationConfig = MSRValidationConfig()) -> ValidationReport:
    """Validate the raw dataset and the CTR rows built from it; write the report under `out`."""
    t0 = time.perf_counter()
    scenarios = declared_scenarios(cfg)
    base_cfg = ValidationConfig(min_user_interactions=vcfg.min_user_interactions,
                                scenarios=scenarios)
    raw = validate_dataset(data, None, base_cfg)
    checks, counts = list(raw.checks), dict(raw.rows)
    if raw.success:
        try:
            rows = load_rows(data, cfg)
        except DataError as exc:
            checks.append(Check("ctr_rows", "rows_can_be_built", "", False, str(exc)))
        else:
            made = tuple(rows.scenarios) if rows.scenario_rule == "genre-group" else ()
            suites = _ctr_suites(rows, made, vcfg)
            per = suites[1][1]
            more, more_counts = run_suites(suites, base_cfg)
            for check in more:  # rows of the per-(split, scenario) table: name the cells
                if check.table == "scenario_splits" and not check.success:
                    cells = [f"{per['split'].iloc[r - 1]}/{per['scenario'].iloc[r - 1]}"
                             for r in check.sample_rows]
                    check.detail += (f" in split/scenario {', '.join(cells)} (need >= "
                                     f"{vcfg.min_rows_per_scenario} rows and both classes)")
                    check.sample_rows = []
            checks += more
            counts.update(more_counts)
    report = ValidationReport(all(c.success for c in checks), str(data), raw.files, counts, checks,
                              time.perf_counter() - t0)
    if out is not None:
        write_report(report, Path(out))
    return report

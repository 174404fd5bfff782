"""Data validation with Great Expectations (GX Core 1.x): nothing trains on data that failed.

    hllm validate --data ../shared/data/ml-100k --out runs/validation

Suites check the interaction table (ids present, integer timestamps in a plausible
range, no duplicate (user, item, timestamp) rows, every item known to the item table,
enough interactions per user, a label spelled 0/1, 0.0/1.0 or true/false (as training
reads it, hllm.data.labels) and scenario in the declared set when
those columns exist) and the item table (unique ids, per-field text coverage, text
length bounds). The tables are validated as read, before any type coercion, so a
timestamp written as a date string is reported as such rather than crashing a parser.
Results go to `validation.json` (machine-readable) and `validation.html` (for people).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hllm import storage, validation_cache
from hllm.data.labels import SPELLINGS as LABEL_SPELLINGS, unreadable_labels
from hllm.data.readers import locate_tables, read_raw_table
from hllm.errors import ConfigError, DataError
from hllm.report_html import render

log = logging.getLogger(__name__)

YEAR_1990 = 631_152_000  # no recommender log predates this; a smaller value is a unit error


@dataclass(frozen=True)
class ValidationConfig:
    min_user_interactions: int = 3  # leave-one-out needs train + validation + test items
    timestamp_min: int = YEAR_1990
    timestamp_max: int = 0  # 0: the end of tomorrow, UTC (events cannot come from the future)
    text_coverage: float = 0.9  # share of items with a non-empty value, per text field
    text_fields: tuple[str, ...] = ()  # empty: every non-id column of the item table
    text_min_len: int = 1
    text_max_len: int = 20_000
    scenarios: tuple[str, ...] = ()  # declared scenario names (multi-scenario data)
    sample_rows: int = 5


@dataclass
class Check:
    """One expectation's outcome, flattened for JSON and for people."""

    table: str
    expectation: str
    column: str
    success: bool
    detail: str = ""
    unexpected_count: int = 0
    sample_rows: list[int] = field(default_factory=list)  # 1-based data rows
    sample_values: list[Any] = field(default_factory=list)
    expected: str = ""  # what the expectation asks for, in words (bounds, set, pattern)
    sample_ids: list[str] = field(default_factory=list)  # users table: the users themselves


@dataclass
class ValidationReport:
    success: bool
    data: str
    files: dict[str, str]
    rows: dict[str, int]
    checks: list[Check]
    seconds: float = 0.0

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    def summary(self) -> str:
        if self.success:
            return f"{self.data}: all {len(self.checks)} expectations passed"
        lines = [f"{self.data}: {len(self.failures)} of {len(self.checks)} expectations failed:"]
        for c in self.failures:
            where = f" column '{c.column}'" if c.column else ""
            expected = f"; expected {c.expected}" if c.expected else ""
            rows = f"; rows {', '.join(map(str, c.sample_rows))}" if c.sample_rows else ""
            ids = f"; users {', '.join(c.sample_ids)}" if c.sample_ids else ""
            values = f"; values {c.sample_values}" if c.sample_values else ""
            lines.append(f"  - {c.table}{where}: {c.expectation} ({c.detail}{expected}{rows}"
                         f"{ids}{values})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "data": self.data, "files": self.files, "rows": self.rows,
                "seconds": self.seconds, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidationReport:
        return cls(d["success"], d["data"], d["files"], d["rows"],
                   [Check(**c) for c in d["checks"]], d.get("seconds", 0.0))


def _suites(inter: pd.DataFrame, items: pd.DataFrame | None, cfg: ValidationConfig):
    """(table name, frame, expectations) for every table present."""
    import great_expectations.expectations as gxe

    # A whole day, so the bound (and every message naming it) is the same all day long.
    ts_max = cfg.timestamp_max or (int(time.time()) // 86_400 + 2) * 86_400
    out = []
    exp: list[Any] = [gxe.ExpectColumnToExist(column=c) for c in ("user_id", "item_id", "timestamp")]
    for col in ("user_id", "item_id"):
        if col in inter:
            exp.append(gxe.ExpectColumnValuesToNotBeNull(column=col))
    if "timestamp" in inter:
        exp.append(gxe.ExpectColumnValuesToMatchRegex(column="timestamp", regex=r"^-?\d+(?:\.0*)?$"))
        exp.append(gxe.ExpectColumnValuesToBeBetween(column="timestamp_value", min_value=cfg.timestamp_min,
                                                     max_value=ts_max))
    if {"user_id", "item_id", "timestamp"} <= set(inter):
        exp.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]))
    if items is not None and "item_id" in inter and "item_id" in items:
        known = sorted(set(items["item_id"].dropna()))
        exp.append(gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=known))
    for col in ("user_id", "item_id"):
        if f"{col}_spellings" in inter:  # "1" and "1.0": one id to a person, two to the reader
            exp.append(gxe.ExpectColumnValuesToNotMatchRegex(column=f"{col}_spellings",
                                                              regex=r" \| "))
    if "label" in inter:  # label_unreadable: the raw value where parse_labels cannot read it
        exp.append(gxe.ExpectColumnValuesToNotBeNull(column="label"))
        exp.append(gxe.ExpectColumnValuesToBeNull(column="label_unreadable"))
    if "scenario" in inter and cfg.scenarios:
        exp.append(gxe.ExpectColumnValuesToBeInSet(column="scenario", value_set=list(cfg.scenarios)))
    out.append(("interactions", inter, exp))
    if "user_id" in inter:
        users = inter.groupby("user_id").size().rename("interactions").reset_index()
        out.append(("users", users, [gxe.ExpectColumnValuesToBeBetween(
            column="interactions", min_value=cfg.min_user_interactions)]))
    if items is not None:
        exp = [gxe.ExpectColumnToExist(column="item_id")]
        if "item_id" in items:
            exp += [gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
                    gxe.ExpectColumnValuesToBeUnique(column="item_id")]
        fields = cfg.text_fields or tuple(c for c in items.columns if c != "item_id")
        for f in fields:
            exp.append(gxe.ExpectColumnToExist(column=f))
            if f in items:
                exp.append(gxe.ExpectColumnValuesToNotBeNull(column=f, mostly=cfg.text_coverage))
                exp.append(gxe.ExpectColumnValueLengthsToBeBetween(
                    column=f, min_value=cfg.text_min_len, max_value=cfg.text_max_len))
        out.append(("items", items, exp))
    return out


def _spellings(ids: pd.Series) -> pd.Series:
    """Per row, every spelling of its id's number in the file: "1 | 1.0" when there are two."""
    text = ids.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    known = pd.DataFrame({"number": numbers, "text": text}).dropna().drop_duplicates()
    spelled = known.groupby("number")["text"].agg(lambda t: " | ".join(sorted(t)))
    return numbers.map(spelled).fillna(text)


def _blank_to_null(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            stripped = frame[col].astype("string").str.strip()
            frame[col] = stripped.mask(stripped == "").astype(object)
    return frame


def _set_words(values: Sequence[Any], shown: int = 8) -> str:
    items = ", ".join(map(str, list(values)[:shown]))
    return f"one of {{{items}}}" if len(values) <= shown else f"one of {len(values):,} values {{{items}, ...}}"


def _bound(value: Any, column: str) -> str:
    """4.0 -> 4; a timestamp bound also as the UTC date a person checks it against."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if column == "timestamp_value":
        return f"{value} ({time.strftime('%Y-%m-%d', time.gmtime(value))})"
    return str(value)


def expected_words(conf: Any) -> str:
    """An expectation's arguments as a reader wants them next to the values that broke it."""
    kw, kind, column = conf.kwargs, conf.type, conf.kwargs.get("column", "")
    if column == "label_unreadable":
        return f"a label spelled {LABEL_SPELLINGS}"
    if column.endswith("_spellings"):
        return "one spelling per id (not both 1 and 1.0)"
    mostly = kw.get("mostly")
    share = f" in at least {mostly:.0%} of rows" if mostly not in (None, 1, 1.0) else ""
    if kind.endswith("to_be_between"):
        low, high = (None if v is None else _bound(v, column)
                     for v in (kw.get("min_value"), kw.get("max_value")))
        what = "length " if "lengths" in kind else ""
        if low is not None and high is not None:
            return f"{what}between {low} and {high}{share}"
        return f"{what}{'>= ' + low if low is not None else '<= ' + str(high)}{share}"
    if kind.endswith("to_be_in_set"):
        return _set_words(kw.get("value_set") or [])
    if kind.endswith("not_match_regex"):
        return f"not matching /{kw.get('regex')}/"
    if kind.endswith("match_regex"):
        return f"matching /{kw.get('regex')}/"
    if kind.endswith("not_be_null"):
        return f"a value{share}"
    if kind.endswith("to_be_null"):
        return "no value"
    if kind.endswith("to_be_unique"):
        return "unique"
    return ""  # expect_column_to_exist and the like: "column is missing" says it all


def _check_from_result(table: str, result: Any, cfg: ValidationConfig,
                       frame: pd.DataFrame | None = None) -> Check:
    conf = result.expectation_config
    kwargs = conf.kwargs
    column = kwargs.get("column") or ",".join(kwargs.get("column_list") or [])
    expected = expected_words(conf)
    if column in ("timestamp_value", "label_unreadable"):  # derived: name the file's column
        column = column.split("_")[0]
    res = result.result or {}
    detail = ""
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail = str(result.exception_info.get("exception_message", "")).splitlines()[0][:200]
    count = int(res.get("unexpected_count") or 0)
    if not result.success and not detail:
        if conf.type == "expect_column_to_exist":
            detail = "column is missing"
        elif count:
            pct = res.get("unexpected_percent")
            detail = f"{count} unexpected value(s)" + (f", {pct:.2f}%" if pct is not None else "")
        elif "observed_value" in res:
            detail = f"observed {res['observed_value']}"
    rows = [int(i) + 1 for i in (res.get("unexpected_index_list") or [])[: cfg.sample_rows]]
    values = [None if isinstance(v, float) and v != v else v
              for v in (res.get("partial_unexpected_list") or [])[: cfg.sample_rows]]
    ids: list[str] = []
    if table == "users":  # rows of the per-user table mean nothing to a reader; show the users
        indices = (res.get("unexpected_index_list") or [])[: cfg.sample_rows]
        ids = [str(frame["user_id"].iloc[i]) for i in indices] if frame is not None else []
        rows = []
    return Check(table, conf.type, column, bool(result.success), detail, count, rows,
                 json.loads(json.dumps(values, default=str)), expected, ids)


def validate_dataset(data: str, out: str | Path | None = None,
                     cfg: ValidationConfig = ValidationConfig(),
                     reuse: bool = False) -> ValidationReport:
    """Validate the dataset at `data`; write validation.json/.html under `out` when given.

    Every pass is remembered (hllm.validation_cache). With `reuse`, a pass remembered for
    the same bytes, settings and code is returned without running the suites again:
    `hllm features build` and `hllm train`, which re-check the data they read, use it;
    `hllm validate` and the pipeline's validation step always run the suites.
    """
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out}: a file, not a directory; validation.json and "
                          "validation.html go into a directory")
    t0 = time.perf_counter()
    try:
        root = storage.local_path(data)
        inter_path, item_path, fmt = locate_tables(root, "auto")
        files = {"interactions": str(inter_path), "items": str(item_path)}
        key = (validation_cache.fingerprint({"interactions": inter_path, "items": item_path},
                                            asdict(cfg))
               if item_path is not None else "")
        if reuse and key and (known := validation_cache.remembered(key)) is not None:
            log.info("%s: validation skipped: it passed before with the same files, settings "
                     "and code (%s)", data, key)
            report = ValidationReport.from_dict({**known, "data": str(data), "files": files})
            if out is not None:
                write_report(report, Path(out))
            return report
        inter = _blank_to_null(read_raw_table(inter_path, fmt))
        if inter.empty:
            raise DataError(f"{inter_path}: the interaction table has a header but no rows")
        if item_path is None:
            # Every model here reads item text (the Item LLM, features, serving): without
            # the table, training ran and scored 0.0 everywhere after one warning.
            raise DataError(f"{inter_path}: no item table beside it (<name>.item, items.csv or "
                            "items.parquet); items need an id and text")
        items = _blank_to_null(read_raw_table(item_path, fmt))
    except DataError as exc:
        # Unreadable input is a failed validation too: report it the same way.
        check = Check("input", "file_is_readable", "", False, str(exc))
        report = ValidationReport(False, str(data), {}, {}, [check], time.perf_counter() - t0)
        if out is not None:
            write_report(report, Path(out))
        return report
    if "timestamp" in inter:
        inter["timestamp_value"] = pd.to_numeric(inter["timestamp"], errors="coerce")
    for col in ("user_id", "item_id"):
        if col in inter:
            inter[f"{col}_spellings"] = _spellings(inter[col])
    if "label" in inter:
        inter["label_unreadable"] = unreadable_labels(inter["label"])
    checks, rows = run_suites(_suites(inter, items, cfg), cfg)
    report = ValidationReport(all(c.success for c in checks), str(data), files, rows, checks,
                              time.perf_counter() - t0)
    if report.success and key:
        validation_cache.remember(key, report.to_dict())
    if out is not None:
        write_report(report, Path(out))
    return report


def require_valid(data: str, min_user_interactions: int = 3) -> None:
    """Refuse what `hllm validate` refuses, with its messages: training reads nothing else first.

    Without it, data that loads but is wrong (millisecond or negative timestamps, user ids
    spelled 1 and 1.0, no items file) trains to plausible metrics and exit code 0.
    """
    report = validate_dataset(data, cfg=ValidationConfig(min_user_interactions=min_user_interactions),
                              reuse=True)
    if not report.success:
        raise DataError(f"not trained (nothing written): {report.summary()}")


def run_suites(suites, cfg: ValidationConfig) -> tuple[list[Check], dict[str, int]]:
    """Run (table, frame, expectations) suites through an ephemeral GX context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # never phone home
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("hllm")
    checks: list[Check] = []
    rows: dict[str, int] = {}
    for table, frame, expectations in suites:
        rows[table] = len(frame)
        suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations))
        batch = (source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
                 .get_batch(batch_parameters={"dataframe": frame}))
        result = batch.validate(suite, result_format={"result_format": "COMPLETE",
                                                      "partial_unexpected_count": cfg.sample_rows})
        checks += [_check_from_result(table, r, cfg, frame) for r in result.results]
    return checks, rows


def write_report(report: ValidationReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / "validation.html").write_text(render_html(report))


def render_html(report: ValidationReport) -> str:
    """A self-contained page: verdict first, then failures with sample rows, then the rest
    (templates/validation.html.j2)."""
    checks = []
    for c in sorted(report.checks, key=lambda c: c.success):
        sample = []
        if c.sample_ids:
            sample.append("users " + ", ".join(c.sample_ids))
        if c.sample_rows:
            sample.append("rows " + ", ".join(map(str, c.sample_rows)))
        if c.sample_values:
            sample.append("values " + json.dumps(c.sample_values))
        checks.append({"success": c.success, "table": c.table, "column": c.column,
                       "expectation": c.expectation, "expected": c.expected,
                       "detail": c.detail, "sample": sample})
    verdict = "PASSED" if report.success else "FAILED"
    view = {"verdict": verdict, "data": report.data, "failures": len(report.failures),
            "seconds": report.seconds, "checks": checks,
            "files": [(k, v, report.rows.get(k, "?")) for k, v in report.files.items()]}
    return render("validation.html.j2", title=f"Validation {verdict}: {report.data}", v=view)

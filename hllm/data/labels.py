"""Click labels as tables spell them: 0/1, 0.0/1.0 and true/false, read one way everywhere.

Validation, `hllm msr stats` and training used to parse the `label` column each in their
own way, so a table written with 1.0/0.0 trained but failed validation on every row. All
three now call `parse_labels`; anything else is refused with its rows named.
"""

from __future__ import annotations

import pandas as pd

SPELLINGS = "0/1, 0.0/1.0 or true/false"


def parse_labels(values: pd.Series) -> pd.Series:
    """1.0 / 0.0 per row; NaN where the value is blank or not a label spelling."""
    text = values.astype("string").str.strip().str.lower()
    numbers = pd.to_numeric(text.mask(text.isin(["true", "false"])), errors="coerce")
    labels = numbers.where(numbers.isin([0, 1]))
    labels = labels.mask((text == "true").fillna(False), 1.0).mask((text == "false").fillna(False), 0.0)
    return labels.astype("float64")


def unreadable_labels(values: pd.Series) -> pd.Series:
    """The raw value where it is not a label spelling (a blank included), null elsewhere."""
    return values.where(parse_labels(values).isna() & values.notna()).astype(object)

"""The rows each client trains on: its region's CSV, encoded as fedsql
encodes them (standardized numbers, one-hot categories)."""

import csv
import functools
import json
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=None)
def load(data_dir, region):
    """Features and labels of `region` (or every region for None), with the
    encoding in `data_dir/encoding.json` (global means/stds and categories,
    the same statistics fedsql's federated preprocessing computes). Cached
    per process, so a ClientApp process that serves several messages parses
    its CSV once."""
    data_dir = Path(data_dir)
    encoding = json.loads((data_dir / "encoding.json").read_text())
    regions = [region] if region else encoding["regions"]
    rows = []
    for r in regions:
        with open(data_dir / f"{r}.csv", newline="") as f:
            rows.extend(csv.DictReader(f))
    numeric = np.array([[float(r[c]) for c in encoding["numeric"]] for r in rows])
    numeric = (numeric - np.array(encoding["means"])) / np.array(encoding["stds"])
    onehot = np.array(
        [[r[column] == value for column, values in encoding["categories"].items()
          for value in values] for r in rows],
        dtype=float,
    )
    x = np.hstack([numeric, onehot])
    y = np.array([r["is_fraud"] in ("true", "t", "1") for r in rows], dtype=int)
    return x, y

"""Step 1 of the workshop: make a small tabular data set and preprocess it into processed_data.csv.

The Azure workshop preprocesses its data with RAPIDS cuDF on a GPU. This script uses cuDF when it
is importable and pandas otherwise (same API for what is used here), on a synthetic data set it
generates itself, so it runs anywhere in a second:

    python preprocess.py            # writes processed_data.csv next to this script
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:  # RAPIDS on a GPU machine; pandas everywhere else
    import cudf as xdf
    ENGINE = "cudf"
except ImportError:
    import pandas as xdf
    ENGINE = "pandas"

HERE = Path(__file__).resolve().parent
ROWS = 3000
SEED = 0


def raw_data(rows: int = ROWS, seed: int = SEED):
    """Three sensor readings per row and a binary label, with the flaws real data has:
    missing values, duplicated rows and a few wild outliers."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=[2.0, 2.0, 2.0], scale=[1.5, 1.0, 2.0], size=(rows, 3))
    score = 1.2 * x[:, 0] - 0.8 * x[:, 1] + 0.5 * x[:, 2] - 0.3 * x[:, 0] * x[:, 1]
    label = (score + rng.normal(scale=0.5, size=rows) > 0.5).astype(np.int64)
    frame = xdf.DataFrame({"sensor_a": x[:, 0], "sensor_b": x[:, 1], "sensor_c": x[:, 2],
                           "label": label})
    holes = rng.choice(rows, size=rows // 50, replace=False)          # 2 % missing readings
    frame.loc[holes[: len(holes) // 2], "sensor_b"] = None
    frame.loc[holes[len(holes) // 2:], "sensor_c"] = None
    wild = rng.choice(rows, size=5, replace=False)                     # sensor glitches
    frame.loc[wild, "sensor_a"] = 1e6
    return xdf.concat([frame, frame.iloc[:60]], ignore_index=True)   # duplicated rows


def preprocess(frame):
    """Drop incomplete and duplicated rows, and glitches more than 6 std from the median."""
    frame = frame.dropna().drop_duplicates()
    for column in ("sensor_a", "sensor_b", "sensor_c"):
        median = frame[column].median()
        spread = (frame[column] - median).abs().median() * 1.4826    # robust std (MAD)
        frame = frame[(frame[column] - median).abs() <= 6 * spread]
    return frame.reset_index(drop=True)


def main() -> None:
    raw = raw_data()
    data = preprocess(raw)
    out = HERE / "processed_data.csv"
    data.to_csv(out, index=False)
    print(f"preprocess ({ENGINE}): {len(raw)} raw rows -> {len(data)} clean rows, "
          f"{int(data['label'].sum())} positive; wrote {out.name}")


if __name__ == "__main__":
    main()

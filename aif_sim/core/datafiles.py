"""Numbers read from the data files a scenario names (CSV with a header row)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from aif_sim.errors import InputError


def read_csv_column(path: Path, column: str | None, where: str, minimum: float | None = None) -> np.ndarray:
    """Numbers of one column (default the first) of a CSV with a header row."""
    try:
        with open(path, newline="") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if not header:
                raise InputError(f"{path}: expected a header row and numbers (file named by {where})")
            name = column if column is not None else header[0]
            if name not in header:
                raise InputError(f"{path}: no column {name!r}, expected one of {header} (file named by {where})")
            index = header.index(name)
            values = [float(row[index]) for row in rows if row]
    except (ValueError, IndexError) as exc:
        raise InputError(f"{path}: column {column or 'first'}: expected numbers ({exc})") from None
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise InputError(f"{path}: column {column or 'first'}: expected at least one number")
    if minimum is not None and (array < minimum).any():
        raise InputError(f"{path}: column {column or 'first'}: expected values >= {minimum}")
    return array

"""Tables of real numbers: ``csv:PATH`` (a header row, numeric columns) and 2-D ``npz:PATH`` arrays.

The paper's argument (Lin, Roberts, Trigoni, Clark 2019, Section 3) holds for any real-valued
data: the learned noise variance sigma^2 balances the ELBO by itself. A table of N rows and D
numeric columns is held as N examples of shape (D, 1, 1) (the library layout of a
D-vector, :func:`~balanced_vae.sources.canonical_shape`), so it trains on the MLP family of
:mod:`~balanced_vae.nets`.

Features are standardised, ``x' = (x - m) / s`` with the mean m and the standard deviation s
of the training rows (:class:`Standardiser`), and the decoder mean is the identity of the
network's output (``TrainConfig.output="identity"``), not a sigmoid. A density of the
standardised data converts to the original units by the Jacobian of the scaling:
``log p(x) = log p(x') - sum_d log s_d`` (:meth:`Standardiser.log_det`).

Bad tables are refused with a :class:`~balanced_vae.data.DataError` that names the file, the
row and the column and says how to fix it, before anything is trained or written: a
non-numeric or empty cell, NaN or infinity, a constant column (its standard deviation is 0, so
its density is not defined), a single row, a row with a wrong number of cells.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, Dataset, split_indices
from .paths import user_path

__all__ = ["Standardiser", "check_table", "load_csv", "load_table", "read_csv", "table_dataset"]

log = logging.getLogger(__name__)

TARGET_SEP = "?target="  # csv:PATH?target=COLUMN: the column --target leaves out


def _row_name(i: int, header: bool) -> str:
    """Row ``i`` (0-based data row) as the user sees it: 'row 3 (line 4 of the file)' for a CSV."""
    return f"row {i + 1} (line {i + 2} of the file)" if header else f"row {i}"


def check_table(
    x: np.ndarray, columns: list[str], source: str, *, header: bool = False, training: bool = True
) -> np.ndarray:
    """Check a table ``x`` (N, D) of floats; returns it as float64.

    Refuses NaN or infinite cells (naming the first one's row and column) and, for ``training``
    rows, fewer than two rows and constant columns. ``header``: rows are numbered as lines of a
    CSV file with a header.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{source}: shape {x.shape}; a table is (N rows, D columns); fix: reshape to (N, D)")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{source}: dtype {x.dtype}; a table holds numbers; fix: save float or integer columns")
    x = x.astype(np.float64)
    if len(x) < (2 if training else 1) or x.shape[1] == 0:
        raise DataError(
            f"{source}: {len(x)} row(s) and {x.shape[1]} column(s); a table needs at least 2 rows "
            "(a single row has no spread to standardise or learn from) and 1 column; fix: add rows"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(
            f"{source}: {_row_name(int(i), header)}, column {columns[j]!r} (column {j + 1}) is {x[i, j]} "
            f"({int(bad.sum())} non-finite cell(s) in all); fix: remove those rows or impute the values"
        )
    const = np.flatnonzero(x.max(0) == x.min(0)) if training else []
    if len(const):
        names = ", ".join(f"{columns[j]!r} (= {x[0, j]:g})" for j in const[:5])
        raise DataError(
            f"{source}: constant column(s) {names}{' ...' if len(const) > 5 else ''}: every row holds "
            "the same value, so it cannot be standardised and its density is not defined; fix: drop "
            "the column (or pass it as --target to leave it out)"
        )
    return x


def read_csv(path: str | Path, target: str | None = None) -> tuple[np.ndarray, list[str]]:
    """A CSV file with a header row and numeric cells -> (x (N, D) float64, column names).

    ``target`` names a column to leave out (e.g. the label). Raises DataError naming the
    line and the column of the first bad cell.
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise DataError(f"{path}: empty file or empty header; fix: a first line naming the columns, e.g. 'a,b,c'")
        header = [h.strip() for h in header]
        if target is not None and target not in header:
            raise DataError(f"{path}: --target {target!r} is not a column; columns: {header}")
        keep = [j for j, h in enumerate(header) if h != target]
        rows = []
        for i, cells in enumerate(reader):
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line
            if len(cells) != len(header):
                raise DataError(
                    f"{path}: {_row_name(i, True)} has {len(cells)} cells but the header names "
                    f"{len(header)} columns; fix: one cell per column on every line"
                )
            row = []
            for j in keep:
                cell = cells[j].strip()
                try:
                    row.append(float(cell))
                except ValueError:
                    what = "an empty cell" if not cell else f"{cell!r}, not a number"
                    raise DataError(
                        f"{path}: {_row_name(i, True)}, column {header[j]!r} (column {j + 1}) is "
                        f"{what}; fix: numeric cells only (encode categories as numbers, impute missing "
                        f"values, or leave the column out with --target {header[j]})"
                    ) from None
            rows.append(row)
    columns = [header[j] for j in keep]
    x = np.array(rows, dtype=np.float64).reshape(len(rows), len(columns))
    return check_table(x, columns, str(path), header=True), columns


@dataclass(frozen=True)
class Standardiser:
    """``x' = (x - mean) / scale`` per feature; ``mean``, ``scale`` (D,) float64, scale > 0."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        """Mean and standard deviation of ``x`` (N, D); a constant feature gets scale 1 (as scikit-learn's
        ``StandardScaler``), so it is only centred."""
        x = np.asarray(x, dtype=np.float64)
        scale = x.std(0)
        scale[~(scale > 10 * np.finfo(np.float64).eps * np.maximum(np.abs(x.mean(0)), 1.0))] = 1.0
        return cls(x.mean(0), scale)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) original units -> standardised."""
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale

    def invert(self, x: np.ndarray) -> np.ndarray:
        """(N, D) standardised -> original units."""
        return np.asarray(x, dtype=np.float64) * self.scale + self.mean

    def log_det(self) -> float:
        """sum_d log s_d: ``log p(x) = log p(x') - log_det()`` (change of variables)."""
        return float(np.log(self.scale).sum())


def to_examples(x: np.ndarray) -> torch.Tensor:
    """A standardised table (N, D) -> float32 examples (N, D, 1, 1), the library layout of D-vectors."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), -1, 1, 1)


def table_dataset(
    name: str, x_train: np.ndarray, x_test: np.ndarray | None = None, *, seed: int = 0, columns: list[str] | None = None
) -> tuple[Dataset, Standardiser]:
    """A real-valued :class:`~balanced_vae.data.Dataset` of a table, standardised by its training rows.

    Without ``x_test`` a seeded tenth of the rows is held out as the test split (none when fewer
    than 10 rows: the training rows stand in, and a log line says so). Returns the data set
    ((N, D, 1, 1) float32, ``real_valued=True``) and the :class:`Standardiser` of its training rows.
    """
    columns = columns or [f"x{j}" for j in range(np.shape(x_train)[-1])]
    x_train = check_table(x_train, columns, f"{name} (train)")
    if x_test is None:
        n_test = len(x_train) // 10
        if n_test:
            train, test = split_indices(len(x_train), n_test, seed)
            x_train, x_test = x_train[train], x_train[test]
        else:
            log.info(
                "%s: %d rows, too few to hold a tenth out; the training rows stand in for the test split",
                name,
                len(x_train),
            )
            x_test = x_train
    else:
        x_test = check_table(x_test, columns, f"{name} (test)", training=False)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(
                f"{name}: {x_train.shape[1]} training columns but {x_test.shape[1]} test columns; "
                "fix: give both splits the same columns"
            )
    scaler = Standardiser.fit(x_train)
    const = np.flatnonzero(x_train.max(0) == x_train.min(0))
    if len(const):
        raise DataError(
            f"{name}: column(s) {[columns[j] for j in const]} are constant on the training rows; fix: "
            "drop them or use more rows"
        )
    data = Dataset(name, to_examples(scaler.apply(x_train)), to_examples(scaler.apply(x_test)), real_valued=True)
    log.info(
        "%s: %d training and %d test rows of %d standardised features (log-det of the scaling %.4g)",
        name,
        len(x_train),
        len(x_test),
        x_train.shape[1],
        scaler.log_det(),
    )
    return data, scaler


def load_csv(arg: str, seed: int = 0) -> Dataset:
    """``csv:PATH`` or ``csv:PATH?target=COLUMN`` as a standardised real-valued data set (see module docstring)."""
    return load_table(f"csv:{arg}", seed)[0]


def load_table(name: str, seed: int = 0) -> tuple[Dataset, Standardiser, list[str]]:
    """A table data set by name (``csv:PATH[?target=COLUMN]`` or a 2-D ``npz:PATH``) with the
    :class:`Standardiser` of its training rows and its column names, to put a run's numbers
    back into the original units."""
    kind, _, arg = name.partition(":")
    if kind == "csv":
        path_arg, sep, target = arg.partition(TARGET_SEP)
        path = user_path(path_arg, "CSV file")
        x, columns = read_csv(path, target if sep else None)
        data, scaler = table_dataset(
            f"csv:{path}" + (f"{TARGET_SEP}{target}" if sep else ""), x, seed=seed, columns=columns
        )
        return data, scaler, columns
    if kind == "npz":
        path = user_path(arg, "npz file")
        with np.load(path, allow_pickle=False) as archive:
            x_train, x_test = archive["x_train"], archive["x_test"]
        data, scaler = table_dataset(f"npz:{path}", x_train, x_test, seed=seed)
        return data, scaler, [f"x{j}" for j in range(x_train.shape[1])]
    raise DataError(f"{name}: not a table (csv:PATH or a 2-D npz:PATH)")

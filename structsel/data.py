"""Datasets available offline: scikit-learn's bundled sets, mnist1d (generated), the GLM toy.

Every loader returns a `Dataset` with a train / validation / test split made from a seed
and features standardised with the training statistics. Regression targets are
standardised too; `Dataset.target_scale` maps predictions back to the original units.
Classification labels may be numbers or text (a CSV column such as `g` / `h`): the
distinct labels, sorted, become classes 0..C-1 and `Dataset.classes` records them (class i
is `classes[i]`), so a model trained on one file can be scored on another with the same
mapping (`make_dataset(..., classes=...)`).
Feature columns of a table may hold text categories and missing values (`load_table`):
`fit_encoding` decides on the training rows how each column becomes numbers (text: one
indicator column per category; missing numbers: the training median plus an indicator
column) and `apply_encoding` applies that record to any file with the same columns.
Bad data raises `DataError` (a ValueError) with one line saying what is wrong.
"""

from __future__ import annotations

import collections
import csv
import gzip
import pathlib
import re
import zipfile
from typing import NamedTuple

import numpy as np

from structsel.cells import (DECIMAL_COMMA, category, from_decimal_comma, has_decimal_comma,
                             is_missing, numbers, numbers_and_formats)
from structsel.cells import FORMATS as FORMATS, MISSING as MISSING  # re-exported

TASKS = ("classification", "regression")
SKLEARN_SETS = ("digits", "breast_cancer", "wine", "diabetes")


class DataError(ValueError):
    """The data cannot be used as given (message names the problem)."""


class Dataset(NamedTuple):
    """A split, standardised dataset (numpy float32 features)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    num_classes: int  # 0 for regression
    name: str
    target_scale: tuple[float, float] = (0.0, 1.0)  # (mean, std) of the raw regression target
    split: dict | None = None  # seed and sizes, for the run record
    classes: tuple | None = None  # original label of each class 0..C-1 (None: regression)
    # how a table's columns became the feature columns (`fit_encoding`); None: used as read
    encoding: dict | None = None
    feature_names: tuple | None = None  # name of each feature column (tables)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[-1])


def split_indices(n: int, *, seed: int, val_fraction: float = 0.2,
                  test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random permutation cut into train / validation / test index arrays."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise DataError(f"{name} must be in (0, 1), got {frac}")
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 2:
        raise DataError(f"too few rows for the split: {n} rows give train/val/test = "
                        f"{n_train}/{n_val}/{n_test}; need at least 2 in each")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def infer_task(y: np.ndarray) -> str:
    """Classification for text labels and for integer-valued targets with at most 50
    distinct values; regression otherwise."""
    if not np.issubdtype(np.asarray(y).dtype, np.number):
        return "classification"
    values = np.unique(y)
    integral = np.all(np.equal(np.mod(values, 1), 0))
    return "classification" if integral and len(values) <= 50 else "regression"


def _label(value):
    """A class label as a JSON scalar: str, int for integral numbers, else float."""
    if isinstance(value, (str, np.str_)):
        return str(value)
    value = float(value)
    return int(value) if value.is_integer() else value


def encode_labels(y: np.ndarray, classes=None) -> tuple[np.ndarray, tuple]:
    """(integer classes, labels): y_i -> index of y_i in the sorted distinct labels, or in
    `classes` when given (a label it does not list raises DataError)."""
    if classes is None:
        labels, codes = np.unique(y, return_inverse=True)
        return codes.astype(np.int32), tuple(_label(c) for c in labels)
    classes = tuple(_label(c) for c in classes)
    index = {c: i for i, c in enumerate(classes)}
    try:
        codes = np.array([index[_label(v)] for v in y], dtype=np.int32)
    except KeyError as err:
        raise DataError(f"label {err.args[0]!r} is not one of the model's classes "
                        f"{list(classes)}") from None
    return codes, classes


def make_dataset(x: np.ndarray, y: np.ndarray, *, name: str, seed: int = 0, task: str | None = None,
                 val_fraction: float = 0.2, test_fraction: float = 0.2,
                 classes=None, centred=()) -> Dataset:
    """Validates, splits and standardises (x, y); `task` is inferred when None. The
    columns listed in `centred` (0/1 indicator columns of an encoding) are centred with
    their training mean but not scaled: a 0/1 column's unit is meaningful, and dividing a
    rare category's column by its standard deviation (0.1 for 1 % of the rows) would
    make its rows ten times the size of every other input.

    Labels (numbers or text) become classes 0..C-1 in sorted order, or in the order of
    `classes` when given (the mapping of a trained model; then C = len(classes)).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    text = not np.issubdtype(y.dtype, np.number)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D table, got shape {x.shape}")
    if x.shape[1] == 0:
        raise DataError("features must have at least one column besides the target, got none")
    if y.shape != (x.shape[0],):
        raise DataError(f"target must have one value per row ({x.shape[0]}), got shape {y.shape}")
    if not np.all(np.isfinite(x)):
        rows = np.unique(np.nonzero(~np.isfinite(x))[0])[:5].tolist()
        raise DataError(f"features contain NaN or inf (rows {rows}...)")
    if not text and not np.all(np.isfinite(y.astype(np.float64))):
        raise DataError("target contains NaN or inf")
    task = task or infer_task(y)
    if task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {task!r}")
    if text and task == "regression":
        raise DataError(f"regression needs a numeric target; it has text labels such as "
                        f"{str(y[0])!r}")
    tr, va, te = split_indices(len(y), seed=seed, val_fraction=val_fraction,
                               test_fraction=test_fraction)
    mean, std = x[tr].mean(0), x[tr].std(0)
    std = np.where(std > 0, std, 1.0)
    std[list(centred)] = 1.0
    xs = ((x - mean) / std).astype(np.float32)
    if task == "classification":
        ys, labels = encode_labels(y, classes)
        if len(labels) < 2:
            raise DataError(f"classification needs at least 2 classes, got {len(labels)} "
                            f"(the target is constant: {list(labels)})")
        if classes is None and 2 * len(labels) > len(y):
            raise DataError(
                f"classification with {len(labels)} classes in {len(y)} rows: most classes "
                f"have one row, which can be neither learned nor scored (labels such as "
                f"{[str(c) for c in labels[:3]]}); is the target the right column? A "
                "numeric target is a regression: --task regression")
        num_classes, scale = len(labels), (0.0, 1.0)
    else:
        labels = None
        yf = y.astype(np.float64)
        if np.all(yf == yf[0]):
            raise DataError(f"regression needs a target that varies; the target is constant "
                            f"({yf[0]:g} in every row)")
        mu, sd = float(yf[tr].mean()), float(yf[tr].std() or 1.0)
        ys, num_classes, scale = ((yf - mu) / sd).astype(np.float32), 0, (mu, sd)
    split = {"seed": int(seed), "train": len(tr), "val": len(va), "test": len(te)}
    return Dataset(xs[tr], ys[tr], xs[va], ys[va], xs[te], ys[te], task, num_classes, name,
                   scale, split, labels)


def load_sklearn(name: str = "digits", *, seed: int = 0, **kwargs) -> Dataset:
    """One of scikit-learn's bundled sets: digits, breast_cancer, wine, diabetes."""
    if name not in SKLEARN_SETS:
        raise DataError(f"name must be one of {SKLEARN_SETS}, got {name!r}")
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    task = "regression" if name == "diabetes" else "classification"
    return _embedded(bunch.data, bunch.target, names=list(bunch.feature_names), name=name,
                     seed=seed, task=task, **kwargs)


def _embedded(x, y, *, names, name: str, seed: int, ple: int = 0,
              encoding: dict | None = None, **kwargs) -> Dataset:
    """`make_dataset` of an embedded set's numbers; with `ple` > 0 (or the `encoding` of a
    trained model) its columns also get the piecewise-linear columns of `fit_encoding`,
    fitted on the split's training rows, as a table read from a file does."""
    if not ple and encoding is None:
        return make_dataset(x, y, name=name, seed=seed, **kwargs)
    if np.ndim(x) != 2:
        raise DataError(f"{name}: piecewise-linear columns (budget numeric_ple) need a table "
                        f"of shape (n, d), got {np.shape(x)}")
    if encoding is None:
        split = {k: kwargs[k] for k in ("val_fraction", "test_fraction") if k in kwargs}
        train = split_indices(len(y), seed=seed, **split)[0]
        encoding = fit_encoding(x, names, train, source=name, kinds=["numeric"] * len(names),
                                ple=ple)
    if encoding is not None:
        x, names = apply_encoding(x, names, encoding, source=name)
    ds = make_dataset(x, y, name=name, seed=seed, centred=indicator_columns(encoding),
                      **kwargs)
    return ds._replace(encoding=encoding, feature_names=tuple(names))


def load_mnist1d(*, seed: int = 0, num_samples: int = 5000, **kwargs) -> Dataset:
    """mnist1d generated locally (never downloaded): 40-step sequences, 10 classes."""
    from mnist1d.data import get_dataset_args, make_dataset as make_mnist1d

    args = get_dataset_args()
    args.num_samples = num_samples
    data = make_mnist1d(args)
    x = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return _embedded(x, y, names=[f"x{j}" for j in range(x.shape[1])], name="mnist1d",
                     seed=seed, task="classification", **kwargs)


def glm_toy(*, seed: int = 0, num_objects: int = 50, num_features: int = 11,
            noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The thesis' GLM toy: x_j ~ N(0, 1) plus a constant feature 1; y = tanh(x_0) + noise*eps.

    Returns X of shape (m, num_features + 1) (last column is the constant) and y of shape (m,).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_objects, num_features))
    y = np.tanh(x[:, 0]) + noise * rng.standard_normal(num_objects)
    x = np.concatenate([x, np.ones((num_objects, 1))], axis=1)
    return x.astype(np.float32), y.astype(np.float32)


def read_table(path: str | pathlib.Path, *, target: str | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads a CSV (header row) or .npz (arrays `x`, `y`) into features, target, names.

    For a CSV, `target` names the label column (default: the last column); a target
    column with a value that is not a number is read as text labels (array of str). The
    CSV is UTF-8 (a byte-order mark is skipped) separated by ',' or, when its header row
    holds more of them, ';', tab or '|'. Integer and float16 arrays of an .npz are
    accepted (converted to float). Feature cells in `cells.MISSING` (empty, 'NA', '?', ...) are
    missing values (NaN). When every feature column is numeric the features are a float
    array; when a column holds text categories (`column_kinds`) they are an object array
    of the cells (numbers as float, text stripped, a missing text cell '').
    """
    path = pathlib.Path(path)
    cells, y, names = _read_cells(path, target)
    if np.issubdtype(cells.dtype, np.number):  # an .npz
        return cells, y, names
    kinds = column_kinds(cells, names, source=path)
    values = {j: numbers(cells[:, j])[0] for j, k in enumerate(kinds) if k == "numeric"}
    if len(values) == len(names):
        return np.stack([values[j] for j in range(len(names))], axis=1), y, names
    x = np.array([[values[j][i] if j in values else category(cells[i, j])
                   for j in range(len(names))] for i in range(len(cells))], dtype=object)
    return x, y, names


def _read_cells(path: pathlib.Path, target: str | None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features, target, names): an .npz's numeric x, or a CSV's cells (`_read_csv`)."""
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; expected a .csv or .npz file")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    if not _is_text_table(path):
        raise DataError(f"data file must be .csv (also .tsv, .txt, each optionally .gz) or "
                        f".npz, got {path.name}")
    return _read_csv(path, target)


def _read_npz(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path) as npz:
            if "x" not in npz or "y" not in npz:
                raise DataError(f"{path}: .npz needs arrays 'x' and 'y', has "
                                f"{sorted(npz.files)}")
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot read it as an .npz archive ("
                        f"{str(err).splitlines()[0][:80]})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: features must be numeric, got dtype {x.dtype}")
    return x.reshape(len(x), -1), y, [f"x{i}" for i in range(int(np.prod(x.shape[1:])))]


def _read_csv(path: pathlib.Path, target: str | None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features, target, feature names) of a CSV file: the features are float64 when
    every cell is a number, else the (n, d) cells as str."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            delimiter = max(_DELIMITERS, key=first.count)
            rows = list(csv.reader(f, delimiter=delimiter if first.count(delimiter) else ","))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except (OSError, EOFError) as err:  # gzip: BadGzipFile, a truncated file
        raise DataError(f"{path}: cannot read the data file "
                        f"({getattr(err, 'strerror', None) or err})") from None
    while rows and not any(v.strip() for v in rows[-1]):  # blank lines at the end
        rows.pop()
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if delimiter != "," and first.count(delimiter) and any(
            has_decimal_comma(v) for row in body for v in row):
        body = [[from_decimal_comma(v) for v in row] for row in body]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(f"{path}: column names must be unique; {duplicated} appear more than "
                        "once (a target column repeated as a feature would leak the label)")
    if len(header) < 2:
        raise DataError(f"{path}: needs at least one feature column and a target column "
                        f"separated by one of {list(_DELIMITERS)}; the header is {header}")
    target = target or header[-1]
    if target not in header:
        raise DataError(f"{path}: unknown target column {target!r}; columns are {header}")
    col = header.index(target)
    names = [h for i, h in enumerate(header) if i != col]
    cells = np.empty((len(body), len(names)), dtype=object)
    labels = []
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {r} has {len(row)} fields, header has {len(header)}")
        cells[r - 2] = [v.strip() for i, v in enumerate(row) if i != col]
        labels.append(row[col].strip())
    values, bad = numbers(np.array(labels, dtype=object))
    # a gap: an empty cell, or a missing-value marker among numbers ('none' can be a class)
    gaps = [r for r, v in enumerate(labels) if v == "" or (bad is None and np.isnan(values[r]))]
    if gaps:
        raise DataError(f"{path}: the target column {target!r} has no value on {len(gaps)} "
                        f"row(s) (first at line {gaps[0] + 2}: {labels[gaps[0]]!r}); remove "
                        "those rows: a row without a label can be neither learned nor scored")
    y = values if bad is None else np.array(labels, dtype=str)
    try:  # a table of numbers (the common case) in one conversion
        return cells.astype(np.float64), y, names
    except ValueError:
        return cells, y, names


_DELIMITERS = (",", ";", "\t", "|")
# a text column becomes one indicator column per category seen on at least
# MIN_CATEGORY_ROWS training rows, at most MAX_CATEGORIES of them (the most frequent);
# the others share one 'other' column
MAX_CATEGORIES = 30
MIN_CATEGORY_ROWS = 2



def column_kinds(cells: np.ndarray, names, *, source) -> list[str]:
    """'numeric' or 'text' for each column of the (n, d) cells. A column is text when
    some present cell is not a number: codes mixing numbers and text (tickets, postcodes)
    are text too. A column of mostly numbers whose other cells are one repeated value (a
    missing-value marker not in `cells.MISSING`) or under 5 % of its cells (typos), a column
    with decimal commas, and a numeric column with an infinite value raise DataError
    naming the column and the line."""
    kinds = []
    for j, name in enumerate(names):
        col = cells[:, j]
        values, bad = numbers(col)
        if bad is None:
            if np.isinf(values).any():
                row = int(np.nonzero(np.isinf(values))[0][0])
                raise DataError(f"{source}: feature column(s) [{name!r}] contain inf (first at "
                                f"{_where(source, row)})")
            kinds.append("numeric")
            continue
        present = [i for i, v in enumerate(col) if not is_missing(v)]
        if all(DECIMAL_COMMA.match(col[i]) for i in present if np.isnan(values[i])):
            raise DataError(f"{source}: line {bad + 2}, column {name!r} is not numeric "
                            f"({col[bad]!r}: a decimal comma or a thousands separator? write "
                            "numbers as 1234.5)")
        share = int(np.isfinite(values).sum() + np.isinf(values).sum())
        texts = {col[i] for i in present if np.isnan(values[i])}
        rare = 20 * (len(present) - share) < len(present)  # under 5 % of the cells
        if 2 * share >= len(present) and (len(texts) == 1 or rare):
            raise DataError(f"{source}: line {bad + 2}, column {name!r} is not numeric "
                            f"({col[bad]!r}; {share} of its {len(present)} values are numbers; "
                            "write a missing value as an empty cell or NA)")
        kinds.append("text")
    return kinds


def fit_encoding(x: np.ndarray, names, rows, *, source, kinds=None,
                 bins: int = 0, ple: int = 0) -> dict | None:
    """How each column becomes feature columns, decided on the training `rows`: None when
    every column is numeric without a missing value (the table is used as read). Else a
    JSON-able record {"columns": [...]}, one entry per column:
    - numeric: {"name", "kind": "numeric"} plus "formats" when its numbers carry a
      currency or percent sign, thousands separators or are ISO dates (`cells.FORMATS`; a date
      is its number of days since 1970-01-01) and, when the column has missing values,
      "fill" (the median of its training values) and "indicator" (true when training
      rows miss it: an extra 0/1 column 'name (missing)'); with `bins` > 0, a column
      with more than `bins` distinct training values also gets "bins", the interior
      edges of `bins` quantile bins of its training values (`quantile_bins`): one 0/1
      column per bin besides the number (scikit-learn's KBinsDiscretizer, strategy
      "quantile", one-hot); with `ple` > 0, such a column (more than `ple` distinct
      values) gets "ple", the `ple` + 1 edges of `ple` quantile bins (outer ones
      included): one piecewise-linear column per bin besides the number
      (`piecewise_linear`; Gorishniy et al. 2022, "On embeddings for numerical features
      in tabular deep learning");
    - text: {"name", "kind": "categorical", "categories", "other"}: one 0/1 column per
      category (sorted; '' is the missing value), one column for the second when there
      are exactly two and no other; with "other" an extra column for the pooled rare and
      unseen categories (without it, an unseen category is all zeros);
    - {"name", "kind": "dropped", "reason"}: a text column with no category on two
      training rows (an identifier), a column with one value / no value on them, or an
      index column (`_index_column`: the row numbers, e.g. pandas' unnamed index).
    """
    if kinds is None:
        kinds = column_kinds(x, names, source=source)
    rows = np.asarray(rows)
    columns, plain = [], True
    for j, (name, kind) in enumerate(zip(names, kinds)):
        if kind == "text":
            plain = False
            train = [category(v) for v in x[rows, j]]
            counts = collections.Counter(train)
            ranked = sorted(counts, key=lambda c: (-counts[c], c))
            kept = [c for c in ranked if counts[c] >= MIN_CATEGORY_ROWS][:MAX_CATEGORIES]
            other = any(c not in kept for c in train)
            if not kept or (len(kept) == 1 and not other):
                reason = ("no value repeats on the training rows (an identifier?)" if not kept
                          else "one value on every training row")
                columns.append({"name": name, "kind": "dropped", "reason": reason})
                continue
            columns.append({"name": name, "kind": "categorical", "categories": sorted(kept),
                            "other": bool(other)})
            continue
        values, _, formats = numbers_and_formats(x[:, j])
        index = _index_column(name, values)
        if index:
            plain = False
            columns.append({"name": name, "kind": "dropped", "reason": index})
            continue
        entry = {"name": name, "kind": "numeric"}
        if formats:  # '$1,200', '12%', '2020-03-01': read as numbers
            plain = False
            entry["formats"] = formats
        missing = np.isnan(values)
        if missing.any():
            plain = False
            train = values[rows]
            if np.isnan(train).all():
                columns.append({"name": name, "kind": "dropped",
                                "reason": "no value on the training rows"})
                continue
            entry.update(fill=float(np.median(train[~np.isnan(train)])),
                         indicator=bool(np.isnan(train).any()))
        if bins or ple:  # on the training values as the model reads them (gaps filled)
            train = np.where(np.isnan(values), entry.get("fill", 0.0), values)[rows]
            distinct = len(np.unique(train))
            if bins and distinct > bins:
                entry["bins"] = quantile_bins(train, bins)
            if ple and distinct > ple:
                entry["ple"] = [float(e) for e in quantile_edges(train, ple)]
            plain = plain and not ("bins" in entry or "ple" in entry)
        columns.append(entry)
    return None if plain else {"columns": columns}


def quantile_bins(train: np.ndarray, bins: int) -> list[float]:
    """The interior edges of `bins` quantile bins of the training values: the 0, 1/bins,
    ..., 1 quantiles (linear interpolation), an edge closer than 1e-8 to the previous one
    dropped, the outer two left out (values beyond them fall in the end bins): scikit-
    learn's KBinsDiscretizer(strategy="quantile", quantile_method="linear")."""
    return [float(e) for e in quantile_edges(train, bins)[1:-1]]


def quantile_edges(train: np.ndarray, bins: int) -> np.ndarray:
    """All edges of `bins` quantile bins of the training values (see `quantile_bins`)."""
    edges = np.quantile(np.asarray(train, np.float64), np.linspace(0, 1, bins + 1))
    return edges[np.ediff1d(edges, to_begin=np.inf) > 1e-8]


def piecewise_linear(values: np.ndarray, edges) -> np.ndarray:
    """The piecewise-linear encoding (n, T) of `values` by T = len(edges) - 1 bins:
    column t is (v - e_t) / (e_{t+1} - e_t) clipped to [0, 1], the first column not
    clipped below and the last not clipped above (values beyond the training range go on
    linearly). A linear function of the columns is a continuous piecewise-linear function
    of v with knots at the edges: a linear model on them is an additive spline model."""
    e = np.asarray(edges, np.float64)
    t = (np.asarray(values, np.float64)[:, None] - e[:-1]) / np.diff(e)
    lower = np.full(len(e) - 1, 0.0)
    lower[0] = -np.inf
    upper = np.full(len(e) - 1, 1.0)
    upper[-1] = np.inf
    return np.clip(t, lower, upper)


TEXT_SUFFIXES = (".csv", ".tsv", ".txt")


def _is_text_table(path) -> bool:
    """A CSV-like file: .csv, .tsv or .txt, optionally gzip-compressed (.gz)."""
    suffixes = [x.lower() for x in pathlib.Path(path).suffixes[-2:]]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in TEXT_SUFFIXES


# the names of index columns: pandas writes its index unnamed and reads it back as
# 'Unnamed: 0'; identifiers (id, ID, index, No, customer_id, PassengerId, ...)
_UNNAMED = re.compile(r"^(Unnamed: \d+)?$")
_ID_NAME = re.compile(r"^(index|idx|id|key|no|nr|#|rows?|row ?(id|no|num|number))$|[_ .-]id$",
                      re.IGNORECASE)
_CAMEL_ID = re.compile(r"([a-z]Id|ID)$")


def _index_column(name: str, values: np.ndarray) -> str | None:
    """Why the column is an index, not a feature, or None. An unnamed column ('' or pandas'
    'Unnamed: 0') or one named like an identifier (`_ID_NAME`, `_CAMEL_ID`) holding the
    row numbers 0, 1, 2, ... or 1, 2, 3, ... down the file, or them in another order (an
    index written after a shuffle). Read as a number it would tell the model where a row
    sits in the file, which in a sorted export is the label. Other names are kept: a
    `day` or `t` counting the rows is a trend, a `rank` a feature."""
    n = len(values)
    if not (_UNNAMED.match(name) or _ID_NAME.search(name.strip())
            or _CAMEL_ID.search(name.strip())):
        return None
    if n < 3 or not np.isfinite(values).all() or (values != np.round(values)).any():
        return None
    for start in (0, 1):
        if np.array_equal(values, np.arange(start, start + n)):
            return f"row numbers {start}, {start + 1}, {start + 2}, ... down the file"
    if values.min() in (0, 1) and np.array_equal(
            np.sort(values), np.arange(values.min(), values.min() + n)):
        return "an index column: the row numbers in another order"
    return None


def _where(source, row: int) -> str:
    return f"line {row + 2}" if _is_text_table(source) else f"row {row}"


def _category_columns(c: dict) -> list[str]:
    """The categories of a categorical record that get a 0/1 column: all, or the second
    of exactly two without 'other' (the first is its complement)."""
    cats = list(c["categories"])
    return cats[1:] if len(cats) == 2 and not c["other"] else cats


def apply_encoding(x: np.ndarray, names, encoding: dict, *, source
                   ) -> tuple[np.ndarray, list[str]]:
    """(float64 feature columns, their names) of the table's cells `x` under `encoding`
    (`fit_encoding`'s record, possibly of another file with the same columns). DataError
    when the columns differ from the record's or a value does not fit it."""
    recorded = [c["name"] for c in encoding["columns"]]
    if list(names) != recorded:
        raise DataError(f"{source}: the feature columns {list(names)} are not the "
                        f"{recorded} that the model was trained on")
    out, out_names = [], []
    for j, c in enumerate(encoding["columns"]):
        name = c["name"]
        if c["kind"] == "numeric":
            values, bad = numbers(x[:, j])
            if bad is not None:
                raise DataError(f"{source}: {_where(source, bad)}, column {name!r} is not "
                                f"numeric ({x[bad, j]!r}; the model reads a number)")
            missing = np.isnan(values)
            if missing.any() and "fill" not in c:
                raise DataError(f"{source}: column {name!r} has missing values (first at "
                                f"{_where(source, int(np.nonzero(missing)[0][0]))}); the "
                                "model was trained without missing values there")
            if np.isinf(values).any():
                row = int(np.nonzero(np.isinf(values))[0][0])
                raise DataError(f"{source}: feature column(s) [{name!r}] contain inf (first "
                                f"at {_where(source, row)})")
            number = np.where(missing, c.get("fill", 0.0), values)
            out.append(number)
            out_names.append(name)
            if c.get("indicator"):
                out.append(missing.astype(np.float64))
                out_names.append(f"{name} (missing)")
            if c.get("bins"):
                edges = np.asarray(c["bins"], np.float64)
                which = np.searchsorted(edges, number, side="right")
                bounds = [-np.inf, *edges, np.inf]
                for k in range(len(edges) + 1):
                    out.append((which == k).astype(np.float64))
                    out_names.append(f"{name} in [{bounds[k]:.4g}, {bounds[k + 1]:.4g})")
            if c.get("ple"):
                pieces = piecewise_linear(number, c["ple"])
                out += list(pieces.T)
                out_names += [f"{name} (piece {k + 1} of {pieces.shape[1]})"
                              for k in range(pieces.shape[1])]
        elif c["kind"] == "categorical":
            values = np.array([category(v) for v in x[:, j]], dtype=object)
            cats = list(c["categories"])
            for cat in _category_columns(c):
                out.append((values == cat).astype(np.float64))
                out_names.append(f"{name}={cat if cat else '(missing)'}")
            if c["other"]:
                out.append((~np.isin(values, cats)).astype(np.float64))
                out_names.append(f"{name}=(other)")
    if not out:
        raise DataError(f"{source}: no feature column is left "
                        f"({', '.join(c['name'] + ': ' + c['reason'] for c in encoding['columns'])})")
    return np.stack(out, axis=1), out_names


def column_roles(encoding: dict | None) -> list[tuple[str, int]]:
    """(role, number) of each feature column that `apply_encoding` makes of `encoding`:
    role 'number', 'missing' (its indicator), 'bin', 'piece' or 'category' (a category or
    'other'); number: the index of the feature column of its number (-1 for categories)."""
    out = []
    for c in (encoding or {"columns": []})["columns"]:
        if c["kind"] == "numeric":
            number = len(out)
            out.append(("number", number))
            out += [("missing", number)] * bool(c.get("indicator"))
            out += [("bin", number)] * (len(c["bins"]) + 1 if c.get("bins") else 0)
            out += [("piece", number)] * (len(c["ple"]) - 1 if c.get("ple") else 0)
        elif c["kind"] == "categorical":
            out += [("category", -1)] * (len(_category_columns(c)) + bool(c["other"]))
    return out


def indicator_columns(encoding: dict | None) -> list[int]:
    """Indices of the bounded columns (categories, 'other', missing indicators, bins,
    pieces) among the feature columns that `apply_encoding` makes of `encoding`: they are
    centred, not scaled."""
    return [j for j, (role, _) in enumerate(column_roles(encoding)) if role != "number"]


def describe_encoding(encoding: dict | None) -> list[tuple[str, str]]:
    """(label, text) rows on what the encoding did (none for a table used as read)."""
    if not encoding:
        return []
    cols, rows = encoding["columns"], []
    text = [c for c in cols if c["kind"] == "categorical"]
    if text:
        rows.append(("text columns", "as 0/1 columns per category: " + ", ".join(
            f"{c['name']} ({len(c['categories'])}{' + other' if c['other'] else ''})"
            for c in text)))
    units = [c for c in cols if c["kind"] == "numeric" and c.get("formats")]
    if units:
        rows.append(("numbers read", ", ".join(
            f"{c['name']} ({', '.join(c['formats'])})" for c in units)
            + ("; a date is its number of days since 1970-01-01"
               if any("date" in c["formats"] for c in units) else "")))
    filled = [c for c in cols if c["kind"] == "numeric" and "fill" in c]
    if filled:
        rows.append(("missing values", "filled with the training median: " + ", ".join(
            c["name"] + (" (+ indicator)" if c["indicator"] else "") for c in filled)))
    binned = [c for c in cols if c["kind"] == "numeric" and c.get("bins")]
    if binned:
        rows.append(("number bins", "0/1 columns of training-quantile bins: " + ", ".join(
            f"{c['name']} ({len(c['bins']) + 1})" for c in binned)))
    pieces = [c for c in cols if c["kind"] == "numeric" and c.get("ple")]
    if pieces:
        rows.append(("number pieces", "piecewise-linear columns of training-quantile bins: "
                     + ", ".join(f"{c['name']} ({len(c['ple']) - 1})" for c in pieces)))
    dropped = [c for c in cols if c["kind"] == "dropped"]
    if dropped:
        rows.append(("dropped columns", ", ".join(f"{c['name'] or '(unnamed)'} ({c['reason']})"
                                                   for c in dropped)))
    return rows


def load_table(path: str | pathlib.Path, *, target: str | None = None, task: str | None = None,
               seed: int = 0, encoding: dict | None = None, bins: int = 0, ple: int = 0,
               **kwargs) -> Dataset:
    """A CSV/.npz file as a split, standardised Dataset (see `read_table`; `kwargs` go to
    `make_dataset`, e.g. `classes`). Text categories and missing values are encoded
    (`fit_encoding` on the training rows of the split, or the given `encoding` of a
    trained model); the record is `Dataset.encoding`, and its 0/1 columns are centred, not
    scaled (`make_dataset`'s `centred`). `bins` > 0: the numeric columns also get 0/1
    columns of that many training-quantile bins (`fit_encoding`)."""
    path = pathlib.Path(path)
    x, y, names = _read_cells(path, target)
    column = f"column {target!r}" if target else ("the last column" if _is_text_table(path)
                                                  else "array 'y'")
    try:
        if encoding is None:
            kinds = column_kinds(x, names, source=path)  # its errors before the split's
            split = {k: kwargs[k] for k in ("val_fraction", "test_fraction") if k in kwargs}
            train, _, _ = split_indices(len(y), seed=seed, **split)
            encoding = fit_encoding(x, names, train, source=path, kinds=kinds, bins=bins,
                                    ple=ple)
        if encoding is None:
            features = np.asarray(x, dtype=np.float64)  # numbers without gaps
        else:
            features, names = apply_encoding(x, names, encoding, source=path)
        ds = make_dataset(features, y, name=path.stem, seed=seed, task=task,
                          centred=indicator_columns(encoding), **kwargs)
    except DataError as err:
        if str(err).startswith(str(path)):
            raise
        raise DataError(f"{path} (target: {column}): {err}") from None
    return ds._replace(encoding=encoding, feature_names=tuple(names))

def load(name: str, *, seed: int = 0, **kwargs) -> Dataset:
    """A named embedded dataset: one of SKLEARN_SETS or 'mnist1d'."""
    if name == "mnist1d":
        return load_mnist1d(seed=seed, **kwargs)
    if name in SKLEARN_SETS:
        return load_sklearn(name, seed=seed, **kwargs)
    raise DataError(f"dataset must be one of {SKLEARN_SETS + ('mnist1d',)}, got {name!r}")
